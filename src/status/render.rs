//! A snapshot as `/status` (`key: value` lines), `/status.json` (one object) and `/metrics`
//! (Prometheus text format): three walks over the one field table ([`super::fields`]).
use std::collections::BTreeMap;
use std::fmt::Write as _;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Snapshot;
use super::fields::{FIELDS, Field, Kind, metric_name};
use super::view::UpstreamState;

/// A field's value in a snapshot; `None` is shown as `none`, `null`, or no series.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(Option<u64>),
    /// Shown in `/status` with one decimal.
    Real(Option<f64>),
    /// Unix time in seconds (fractions kept to the millisecond).
    Time(Option<f64>),
    Flag(bool),
    Text(Option<String>),
    Classes(BTreeMap<String, u64>),
    /// A number per tenant, in the order shown (most served first, `other` last).
    Tenants(Vec<(String, u64)>),
}

/// One field of one snapshot: its key (with `{period}` filled in) and value.
pub struct Entry {
    pub key: String,
    pub field: &'static Field,
    /// The budget period a `{period}` field stands for.
    pub period: Option<&'static str>,
    pub value: Value,
}

impl Snapshot {
    /// Every field of the table, in its order, `{period}` fields once per period shown.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(FIELDS.len() + 8);
        for field in FIELDS {
            if field.key.contains("{period}") {
                for (period, value) in self.budget_values(field.key) {
                    out.push(Entry {
                        key: field.key.replace("{period}", period),
                        field,
                        period: Some(period),
                        value,
                    });
                }
            } else {
                out.push(Entry {
                    key: field.key.to_owned(),
                    field,
                    period: None,
                    value: self.value(field.key),
                });
            }
        }
        out
    }

    /// The value of a field without `{period}`. A key the table has and this does not is a
    /// defect the tests catch (it shows as `none`).
    fn value(&self, key: &str) -> Value {
        let int = |v: u64| Value::Int(Some(v));
        let text = |v: &str| Value::Text(Some(v.to_owned()));
        match key {
            "state" => text(self.state),
            "buffered_bytes" => int(self.buffered_bytes),
            "capacity_bytes" => int(self.capacity_bytes),
            "buffer_fill_percent" => int(self.buffer_fill_percent),
            "served_bytes" => int(self.served_bytes),
            "fetched_bytes" => int(self.fetched_bytes),
            "discarded_bytes" => int(self.discarded_bytes),
            "replay_history_bytes" => int(self.replay_history_bytes),
            "replay_history_saved" => Value::Flag(self.replay_history_saved),
            "requests_ok" => int(self.requests_ok),
            "requests_failed" => int(self.requests_failed),
            "consecutive_failures" => int(self.consecutive_failures),
            "next_attempt_in_seconds" => Value::Real(self.next_attempt_in_seconds),
            "waiting_readers" => int(self.waiting_readers),
            "refused_waiters" => int(self.refused_waiters),
            "failures" => Value::Classes(self.failures.clone()),
            "last_error" => Value::Text(self.last_error.clone()),
            "last_error_at" => Value::Time(self.last_error_at.map(|t| t as f64)),
            "last_success_at" => Value::Time(self.last_success_at.map(|t| t as f64)),
            "memory_locked" => Value::Flag(self.memory_locked),
            "locked_bytes" => int(self.locked_bytes),
            "mix_local" => Value::Flag(self.mix_local),
            "endpoint" => text(&self.endpoint),
            "token_source" => text(&self.token_source),
            "token_error" => Value::Text(self.token_error.clone()),
            "sandbox" => text(&self.sandbox),
            "fetcher_restarts" => int(self.fetcher_restarts),
            "fetcher_last_exit" => Value::Text(self.fetcher_last_exit.clone()),
            "rate_limit" => text(&self.rate_limit),
            "rate_allowance" => Value::Int(self.rate_allowance.map(u64::from)),
            "rate_limited_until" => Value::Time(self.rate_limited_until),
            "pacing_wait_seconds" => Value::Real(Some(self.pacing_wait_seconds)),
            "budget" => text(&self.budget.summary()),
            "budget_state_file" => Value::Text(self.budget.state_file.clone()),
            "tenant_by" => text(&self.tenants.tenant_by),
            "tenant_budget" => text(self.tenants.budget.as_deref().unwrap_or("off")),
            "active_tenants" => int(self.tenants.active),
            "tenants_at_cap" => int(self.tenants.at_cap),
            "tenant_period_bytes" => self.per_tenant(|t| t.period_bytes),
            "tenant_served_bytes" => self.per_tenant(|t| t.served_bytes),
            "tenant_at_cap" => self.per_tenant(|t| t.at_cap),
            "uptime_seconds" => int(self.uptime_seconds),
            _ => Value::Text(None),
        }
    }

    fn per_tenant(&self, f: impl Fn(&super::TenantReport) -> u64) -> Value {
        Value::Tenants(
            self.tenants
                .top
                .iter()
                .map(|t| (t.name.clone(), f(t)))
                .collect(),
        )
    }

    /// The per-period values of a `{period}` field: limit and remaining for each cap; spent
    /// and renewal for each cap and always for the day and the month.
    fn budget_values(&self, key: &str) -> Vec<(&'static str, Value)> {
        let b = &self.budget;
        let capped = b.caps.iter().map(|c| (c.period, c));
        match key {
            "budget_{period}_limit_bytes" => capped
                .map(|(p, c)| (p.as_str(), Value::Int(Some(c.limit_bytes))))
                .collect(),
            "budget_{period}_remaining_bytes" => capped
                .map(|(p, c)| (p.as_str(), Value::Int(Some(c.remaining_bytes))))
                .collect(),
            "budget_{period}_spent_bytes" => b
                .periods()
                .into_iter()
                .map(|(p, spent, _)| (p.as_str(), Value::Int(Some(spent))))
                .collect(),
            "budget_{period}_renews_at" => b
                .periods()
                .into_iter()
                .map(|(p, _, renews)| (p.as_str(), Value::Time(Some(renews as f64))))
                .collect(),
            "budget_{period}_spend_rate_bytes_per_second" => vec![
                ("hour", Value::Real(Some(b.rate_hour))),
                ("day", Value::Real(Some(b.rate_day))),
            ],
            "budget_{period}_runs_out_at" => capped
                .map(|(p, c)| (p.as_str(), Value::Time(c.runs_out_at.map(|t| t as f64))))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `key: value` lines.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for e in self.entries() {
            let v = match &e.value {
                Value::Int(v) => v.map(|v| v.to_string()),
                Value::Real(v) => v.map(|v| format!("{v:.1}")),
                Value::Time(v) => v.map(rfc3339),
                Value::Flag(v) => Some(if *v { "yes" } else { "no" }.to_owned()),
                Value::Text(v) => v.clone(),
                Value::Classes(m) => (!m.is_empty()).then(|| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                }),
                Value::Tenants(t) => (!t.is_empty()).then(|| {
                    t.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                }),
            };
            let _ = writeln!(s, "{}: {}", e.key, v.as_deref().unwrap_or("none"));
        }
        s
    }

    /// One JSON object with the same keys; numbers as numbers, unknown as `null`.
    pub fn to_json(&self) -> String {
        use serde_json::Value as J;
        let mut map = serde_json::Map::new();
        for e in self.entries() {
            let v = match e.value {
                Value::Int(v) => v.map_or(J::Null, J::from),
                Value::Real(v) => v.map_or(J::Null, J::from),
                Value::Time(v) => v.map_or(J::Null, |t| match whole(t) {
                    Some(secs) => J::from(secs),
                    None => J::from(t),
                }),
                Value::Flag(v) => J::Bool(v),
                Value::Text(v) => v.map_or(J::Null, J::String),
                Value::Classes(m) => J::Object(m.into_iter().map(|(k, v)| (k, v.into())).collect()),
                Value::Tenants(t) => J::Object(t.into_iter().map(|(k, v)| (k, v.into())).collect()),
            };
            map.insert(e.key, v);
        }
        let mut s = serde_json::to_string_pretty(&J::Object(map)).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    }

    /// Prometheus text exposition format: a family per field, samples for known values.
    pub fn to_prometheus(&self) -> String {
        let entries = self.entries();
        let mut s = String::new();
        let mut info_labels = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let field = entries[i].field;
            // The entries of one field stand together (a `{period}` field has several).
            let n = entries[i..]
                .iter()
                .take_while(|e| std::ptr::eq(e.field, field))
                .count();
            let group = &entries[i..i + n];
            i += n;
            if field.kind == Kind::Info {
                if let Value::Text(v) = &group[0].value {
                    info_labels.push((field.key, v.clone().unwrap_or_else(|| "none".into())));
                }
                continue;
            }
            let name = metric_name(field);
            let kind = if matches!(
                field.kind,
                Kind::Counter | Kind::PerClass | Kind::PerTenantCounter
            ) {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(s, "# HELP qrypt_fs_{name} {}", help_line(field));
            let _ = writeln!(s, "# TYPE qrypt_fs_{name} {kind}");
            for e in group {
                let labels = e
                    .period
                    .map(|p| format!("{{period=\"{p}\"}}"))
                    .unwrap_or_default();
                match &e.value {
                    Value::Int(Some(v)) => {
                        let _ = writeln!(s, "qrypt_fs_{name}{labels} {v}");
                    }
                    Value::Time(Some(v)) if whole(*v).is_some() => {
                        let _ = writeln!(s, "qrypt_fs_{name}{labels} {}", *v as u64);
                    }
                    Value::Real(Some(v)) | Value::Time(Some(v)) => {
                        let _ = writeln!(s, "qrypt_fs_{name}{labels} {v:.3}");
                    }
                    Value::Flag(v) => {
                        let _ = writeln!(s, "qrypt_fs_{name}{labels} {}", u8::from(*v));
                    }
                    Value::Text(v) if field.kind == Kind::State => {
                        for st in UpstreamState::ALL {
                            let on = v.as_deref() == Some(st.as_str());
                            let state = st.as_str();
                            let _ = writeln!(
                                s,
                                "qrypt_fs_{name}{{state=\"{state}\"}} {}",
                                u8::from(on)
                            );
                        }
                    }
                    Value::Text(v) => {
                        let _ = writeln!(s, "qrypt_fs_{name}{labels} {}", u8::from(v.is_some()));
                    }
                    Value::Classes(m) => {
                        for (class, v) in m {
                            let class = label(class);
                            let _ = writeln!(s, "qrypt_fs_{name}{{class=\"{class}\"}} {v}");
                        }
                    }
                    Value::Tenants(t) => {
                        for (tenant, v) in t {
                            let tenant = label(tenant);
                            let _ = writeln!(s, "qrypt_fs_{name}{{tenant=\"{tenant}\"}} {v}");
                        }
                    }
                    Value::Int(None) | Value::Real(None) | Value::Time(None) => {}
                }
            }
        }
        let _ = writeln!(
            s,
            "# HELP qrypt_fs_info Configuration, as labels (where the token comes from, never the token)."
        );
        let _ = writeln!(s, "# TYPE qrypt_fs_info gauge");
        let labels = info_labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect::<Vec<_>>()
            .join(",");
        let _ = writeln!(s, "qrypt_fs_info{{{labels}}} 1");
        s
    }
}

/// A time in whole seconds, shown as an integer (most are: only pacing's has milliseconds).
fn whole(t: f64) -> Option<u64> {
    (t.fract() == 0.0 && (0.0..9e15).contains(&t)).then_some(t as u64)
}

/// The help text as one Prometheus HELP line (backslash and newline escaped), with its unit.
fn help_line(field: &Field) -> String {
    let help = field.help.replace('\\', "\\\\").replace('\n', "\\n");
    match field.unit {
        "" => help,
        unit => format!("{help} ({unit})"),
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
pub(super) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Unix time as RFC 3339 in UTC, with milliseconds when it has a fraction.
pub(super) fn rfc3339(unix: f64) -> String {
    let ms = (unix.max(0.0) * 1000.0).round() as i128;
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000) else {
        return format!("{unix}");
    };
    t.format(&Rfc3339).unwrap_or_else(|_| format!("{unix}"))
}
