//! The misbehaviours an emulator can be told to show, and the slot that holds the armed one.
use std::time::Duration;

/// A misbehaviour for the next entropy requests that pass authentication, parameter checks,
/// the rate limit and the quota (see [`super::Emulator::set_fault`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a JSON error body (a code outside 100..=999 sends 500).
    Status(u16),
    /// 429, with or without `Retry-After` (seconds).
    TooManyRequests { retry_after: Option<u64> },
    /// 429 with this exact `Retry-After` text: an HTTP-date (past or future), a negative
    /// number, junk. Text that is no valid header value is sent as no header at all.
    TooManyRequestsText { retry_after: String },
    /// 200 with the JSON cut in half.
    MalformedJson,
    /// 200, valid JSON of the wrong types: `"size"` a string, `"random"` numbers.
    WrongTypes,
    /// 200, `"size"` is N + 1: neither the array length nor the N asked for.
    SizeMismatch,
    /// 200, the last block decodes to 1000 bytes.
    ShortBlock,
    /// 200, the last block has a `*`, outside the base64 alphabet.
    NonBase64,
    /// 200, every block is 1024 zero bytes.
    AllZeroBlocks,
    /// 200, the last block repeats the newest block of an earlier correct response, or else the
    /// first block of this one. With neither (the first response, of 1 KiB) it waits, unspent.
    RepeatBlock,
    /// 200, well-formed, every block an arithmetic progression (random step and offset).
    Progression,
    /// 200, well-formed: the newest bytes of earlier correct responses (up to 16 KiB) shifted
    /// by one byte, then fresh bytes. With no earlier response it waits, unspent.
    ShiftedReplay,
    /// 200, well-formed: the response's last 1024 bytes, moved `shift` bytes earlier (0 to
    /// 1023, less if the response is too short), repeat a block sent at least `age_mib` MiB of
    /// correct bytes ago and not replayed before (the first block of each correct response
    /// that starts a new 64 KiB of correct bytes is kept, 16384 of them). With none left it
    /// waits, unspent.
    OldBlock { age_mib: u64, shift: u64 },
    /// 200, well-formed: the whole response repeats correct bytes sent before, from `age_kib`
    /// KiB minus `shift` bytes before the newest correct byte on (the last 8 MiB of correct
    /// bytes are kept), then fresh bytes where the earlier ones run out. With fewer correct
    /// bytes kept than that it waits, unspent.
    OldWindow { age_kib: u64, shift: u64 },
    /// 200, correct body, `Content-Type: text/html`.
    WrongContentType,
    /// 200, a correct body with 64 MiB of whitespace inside the JSON, streamed (chunked).
    OversizedBody,
    /// A correct answer after this delay (before the headers).
    Delay(Duration),
    /// Close the connection without answering.
    DropConnection,
    /// Headers with `Content-Length` and half the body, then a TCP reset.
    ResetMidBody,
    /// `Content-Length` of the whole body, half of it sent, then a clean close.
    TruncatedBody,
    /// A correct body sent slowly, in small chunks.
    SlowDrip { bytes_per_sec: u32 },
}

impl Fault {
    /// The snake_case name used by the admin API and in [`super::ResponseRecord::fault`].
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Status(_) => "status",
            Fault::TooManyRequests { .. } => "too_many_requests",
            Fault::TooManyRequestsText { .. } => "too_many_requests_text",
            Fault::MalformedJson => "malformed_json",
            Fault::WrongTypes => "wrong_types",
            Fault::SizeMismatch => "size_mismatch",
            Fault::ShortBlock => "short_block",
            Fault::NonBase64 => "non_base64",
            Fault::AllZeroBlocks => "all_zero_blocks",
            Fault::RepeatBlock => "repeat_block",
            Fault::Progression => "progression",
            Fault::ShiftedReplay => "shifted_replay",
            Fault::OldBlock { .. } => "old_block",
            Fault::OldWindow { .. } => "old_window",
            Fault::WrongContentType => "wrong_content_type",
            Fault::OversizedBody => "oversized_body",
            Fault::Delay(_) => "delay",
            Fault::DropConnection => "drop_connection",
            Fault::ResetMidBody => "reset_mid_body",
            Fault::TruncatedBody => "truncated_body",
            Fault::SlowDrip { .. } => "slow_drip",
        }
    }

    /// Parses the admin API's form, `{"fault": NAME, ...parameters}`; `none` gives `Ok(None)`.
    pub fn from_json(v: &serde_json::Value) -> Result<Option<Fault>, String> {
        let name = v
            .get("fault")
            .and_then(|n| n.as_str())
            .ok_or("expected {\"fault\": NAME, ...}")?;
        let num = |k: &str| {
            v.get(k)
                .and_then(|n| n.as_u64())
                .ok_or_else(|| format!("fault {name:?} needs a non-negative integer {k:?}"))
        };
        Ok(Some(match name {
            "none" => return Ok(None),
            "status" => Fault::Status(
                u16::try_from(num("status")?)
                    .ok()
                    .filter(|c| (100..=999).contains(c))
                    .ok_or("\"status\" must be from 100 to 999")?,
            ),
            "too_many_requests" => Fault::TooManyRequests {
                retry_after: match v.get("retry_after") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(_) => Some(num("retry_after")?),
                },
            },
            "too_many_requests_text" => Fault::TooManyRequestsText {
                retry_after: v
                    .get("retry_after")
                    .and_then(|t| t.as_str())
                    .ok_or("fault \"too_many_requests_text\" needs a string \"retry_after\"")?
                    .to_owned(),
            },
            "malformed_json" => Fault::MalformedJson,
            "wrong_types" => Fault::WrongTypes,
            "size_mismatch" => Fault::SizeMismatch,
            "short_block" => Fault::ShortBlock,
            "non_base64" => Fault::NonBase64,
            "all_zero_blocks" => Fault::AllZeroBlocks,
            "repeat_block" => Fault::RepeatBlock,
            "progression" => Fault::Progression,
            "shifted_replay" => Fault::ShiftedReplay,
            "old_block" => Fault::OldBlock {
                age_mib: num("age_mib")?,
                shift: Some(num("shift")?)
                    .filter(|&s| s < 1024)
                    .ok_or("\"shift\" must be from 0 to 1023")?,
            },
            "old_window" => Fault::OldWindow {
                age_kib: Some(num("age_kib")?)
                    .filter(|&a| a > 0)
                    .ok_or("\"age_kib\" must be at least 1")?,
                shift: Some(num("shift")?)
                    .filter(|&s| s < 1024)
                    .ok_or("\"shift\" must be from 0 to 1023")?,
            },
            "wrong_content_type" => Fault::WrongContentType,
            "oversized_body" => Fault::OversizedBody,
            "delay" => Fault::Delay(Duration::from_millis(num("ms")?)),
            "drop_connection" => Fault::DropConnection,
            "reset_mid_body" => Fault::ResetMidBody,
            "truncated_body" => Fault::TruncatedBody,
            "slow_drip" => Fault::SlowDrip {
                bytes_per_sec: u32::try_from(num("bytes_per_sec")?)
                    .ok()
                    .filter(|&b| b > 0)
                    .ok_or("\"bytes_per_sec\" must be from 1 to 4294967295")?,
            },
            other => return Err(format!("unknown fault {other:?}")),
        }))
    }
}

/// The armed fault and how many more requests it applies to (`None`: until cleared).
#[derive(Debug, Default)]
pub(super) struct FaultSlot {
    armed: Option<(Fault, Option<u32>)>,
}

impl FaultSlot {
    pub fn set(&mut self, fault: Option<Fault>, times: Option<u32>) {
        // `times: Some(0)` applies to no request: the same as clearing.
        self.armed = fault.filter(|_| times != Some(0)).map(|f| (f, times));
    }

    pub fn peek(&self) -> Option<&Fault> {
        self.armed.as_ref().map(|(f, _)| f)
    }

    /// Spends one application of the armed fault.
    pub fn take(&mut self) -> Option<Fault> {
        let (fault, times) = self.armed.take()?;
        match times {
            None => self.armed = Some((fault.clone(), None)),
            Some(n) if n > 1 => self.armed = Some((fault.clone(), Some(n - 1))),
            Some(_) => {}
        }
        Some(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn admin_names_round_trip() {
        let all = [
            Fault::Status(503),
            Fault::TooManyRequests {
                retry_after: Some(2),
            },
            Fault::TooManyRequests { retry_after: None },
            Fault::TooManyRequestsText {
                retry_after: "Sun, 06 Nov 1994 08:49:37 GMT".into(),
            },
            Fault::MalformedJson,
            Fault::WrongTypes,
            Fault::SizeMismatch,
            Fault::ShortBlock,
            Fault::NonBase64,
            Fault::AllZeroBlocks,
            Fault::RepeatBlock,
            Fault::Progression,
            Fault::ShiftedReplay,
            Fault::OldWindow {
                age_kib: 4096,
                shift: 333,
            },
            Fault::WrongContentType,
            Fault::OversizedBody,
            Fault::Delay(Duration::from_millis(2000)),
            Fault::DropConnection,
            Fault::ResetMidBody,
            Fault::TruncatedBody,
            Fault::SlowDrip { bytes_per_sec: 100 },
        ];
        for f in all {
            let mut v = json!({"fault": f.name()});
            match &f {
                Fault::Status(c) => v["status"] = json!(c),
                Fault::TooManyRequests { retry_after } => v["retry_after"] = json!(retry_after),
                Fault::TooManyRequestsText { retry_after } => v["retry_after"] = json!(retry_after),
                Fault::Delay(d) => v["ms"] = json!(d.as_millis() as u64),
                Fault::SlowDrip { bytes_per_sec } => v["bytes_per_sec"] = json!(bytes_per_sec),
                Fault::OldWindow { age_kib, shift } => {
                    v["age_kib"] = json!(age_kib);
                    v["shift"] = json!(shift);
                }
                _ => {}
            }
            assert_eq!(Fault::from_json(&v), Ok(Some(f)), "{v}");
        }
        assert_eq!(Fault::from_json(&json!({"fault": "none"})), Ok(None));
        for bad in [
            json!({}),
            json!({"fault": "nope"}),
            json!({"fault": "status"}),
            json!({"fault": "status", "status": 70000}),
            json!({"fault": "delay", "ms": -1}),
            json!({"fault": "slow_drip", "bytes_per_sec": 0}),
            json!({"fault": "old_window", "age_kib": 0, "shift": 0}),
            json!({"fault": "old_window", "age_kib": 4, "shift": 1024}),
            json!({"fault": "too_many_requests", "retry_after": "2"}),
            json!({"fault": "too_many_requests_text", "retry_after": 2}),
            json!({"fault": "too_many_requests_text"}),
        ] {
            assert!(Fault::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slot_counts_down() {
        let mut s = FaultSlot::default();
        s.set(Some(Fault::MalformedJson), Some(2));
        assert_eq!(s.take(), Some(Fault::MalformedJson));
        assert_eq!(s.take(), Some(Fault::MalformedJson));
        assert_eq!(s.take(), None);
        s.set(Some(Fault::WrongTypes), None);
        for _ in 0..5 {
            assert_eq!(s.take(), Some(Fault::WrongTypes));
        }
        s.set(Some(Fault::WrongTypes), Some(0));
        assert_eq!(s.take(), None);
    }
}
