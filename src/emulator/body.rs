//! A response body that can be paced, padded, cut short or broken, for the faults.
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

static SPACES: [u8; 65536] = [b' '; 65536];

#[derive(Default)]
pub struct ScriptedBody {
    chunks: VecDeque<Bytes>,
    /// Whitespace still to stream after the chunks (an oversized body).
    pad: usize,
    /// Sleep before each chunk (a slow drip).
    pace: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Fail after the chunks, which makes hyper abort the connection.
    fail_at_end: bool,
    exact_len: Option<u64>,
}

impl ScriptedBody {
    pub fn full(data: impl Into<Bytes>) -> ScriptedBody {
        let data = data.into();
        ScriptedBody {
            exact_len: Some(data.len() as u64),
            chunks: VecDeque::from([data]),
            ..ScriptedBody::default()
        }
    }

    /// The first half of `data`, then an error (the connection is aborted).
    pub fn reset_after_half(data: Bytes) -> ScriptedBody {
        ScriptedBody {
            chunks: VecDeque::from([data.slice(..data.len() / 2)]),
            fail_at_end: true,
            ..ScriptedBody::default()
        }
    }

    /// The first half of `data` and a normal end; the caller sets a longer Content-Length.
    pub fn truncated(data: Bytes) -> ScriptedBody {
        ScriptedBody {
            chunks: VecDeque::from([data.slice(..data.len() / 2)]),
            ..ScriptedBody::default()
        }
    }

    /// `data` in 64-byte pieces at about `bytes_per_sec`.
    pub fn drip(data: Bytes, bytes_per_sec: u32) -> ScriptedBody {
        const PIECE: usize = 64;
        let chunks = (0..data.len())
            .step_by(PIECE)
            .map(|i| data.slice(i..(i + PIECE).min(data.len())))
            .collect();
        ScriptedBody {
            exact_len: Some(data.len() as u64),
            chunks,
            pace: Some(Duration::from_secs_f64(
                PIECE as f64 / f64::from(bytes_per_sec.max(1)),
            )),
            ..ScriptedBody::default()
        }
    }

    /// `data` followed by `pad` bytes of whitespace, without a Content-Length.
    pub fn padded(data: Bytes, pad: usize) -> ScriptedBody {
        ScriptedBody {
            chunks: VecDeque::from([data]),
            pad,
            ..ScriptedBody::default()
        }
    }

    fn has_more(&self) -> bool {
        !self.chunks.is_empty() || self.pad > 0
    }
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let (Some(p), true) = (this.pace, this.has_more()) {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(p)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        if let Some(c) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        if this.pad > 0 {
            let n = this.pad.min(SPACES.len());
            this.pad -= n;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&SPACES[..n])))));
        }
        if std::mem::take(&mut this.fail_at_end) {
            return Poll::Ready(Some(Err(io::Error::other("emulated reset"))));
        }
        Poll::Ready(None)
    }

    fn size_hint(&self) -> SizeHint {
        self.exact_len
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
