//! A response body that can be paced, padded, or cut short, for the faults.
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use nix::sys::socket::{setsockopt, sockopt};

use super::ledger::GaugeGuard;

static SPACES: [u8; 65536] = [b' '; 65536];

/// How long a cut body waits before breaking: a body that returns pending lets hyper flush what
/// it has written, so the client really gets the headers and the first half.
const PAUSE_BEFORE_CUT: Duration = Duration::from_millis(30);

enum Piece {
    Data(Bytes),
    /// This many spaces, produced lazily.
    Spaces(usize),
}

enum Ending {
    Complete,
    /// End before the announced `Content-Length`: hyper closes the connection.
    Early,
    /// Fail: hyper drops the connection; with the socket's linger set to zero that is a TCP
    /// reset rather than a clean close.
    Reset(Option<Arc<OwnedFd>>),
}

pub(super) struct ScriptedBody {
    pieces: VecDeque<Piece>,
    /// Sleep before each piece (a slow drip).
    pace: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    ending: Ending,
    paused: bool,
    exact_len: Option<u64>,
    /// Keeps the request counted as in flight until hyper is done with the body.
    guard: Option<GaugeGuard>,
}

impl ScriptedBody {
    fn new(pieces: VecDeque<Piece>, ending: Ending, exact_len: Option<u64>) -> ScriptedBody {
        ScriptedBody {
            pieces,
            pace: None,
            sleep: None,
            ending,
            paused: false,
            exact_len,
            guard: None,
        }
    }

    pub fn full(data: impl Into<Bytes>) -> ScriptedBody {
        let data = data.into();
        let len = data.len() as u64;
        ScriptedBody::new(
            VecDeque::from([Piece::Data(data)]),
            Ending::Complete,
            Some(len),
        )
    }

    /// The first half of `data`, then a reset of the connection (`fd`: its socket).
    pub fn reset_after_half(data: Bytes, fd: Option<Arc<OwnedFd>>) -> ScriptedBody {
        let half = data.slice(..data.len() / 2);
        ScriptedBody::new(VecDeque::from([Piece::Data(half)]), Ending::Reset(fd), None)
    }

    /// The first half of `data` and an end; the caller announces the whole length.
    pub fn truncated(data: Bytes) -> ScriptedBody {
        let half = data.slice(..data.len() / 2);
        ScriptedBody::new(VecDeque::from([Piece::Data(half)]), Ending::Early, None)
    }

    /// `data` in small pieces at about `bytes_per_sec`: some 20 pieces a second.
    pub fn drip(data: Bytes, bytes_per_sec: u32) -> ScriptedBody {
        let rate = bytes_per_sec.max(1) as usize;
        let piece = (rate / 20).clamp(1, 16 * 1024);
        let len = data.len() as u64;
        let pieces = (0..data.len())
            .step_by(piece)
            .map(|i| Piece::Data(data.slice(i..(i + piece).min(data.len()))))
            .collect();
        let mut body = ScriptedBody::new(pieces, Ending::Complete, Some(len));
        body.pace = Some(Duration::from_secs_f64(piece as f64 / rate as f64));
        body
    }

    /// `head`, `pad` spaces, `tail`, with no `Content-Length` (chunked).
    pub fn padded(head: Bytes, pad: usize, tail: Bytes) -> ScriptedBody {
        let pieces = VecDeque::from([Piece::Data(head), Piece::Spaces(pad), Piece::Data(tail)]);
        ScriptedBody::new(pieces, Ending::Complete, None)
    }

    pub fn with_guard(mut self, guard: GaugeGuard) -> ScriptedBody {
        self.guard = Some(guard);
        self
    }

    /// Polls the current sleep, starting one of `d` if none is running.
    fn wait(&mut self, d: Duration, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        Poll::Ready(())
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
        if !this.pieces.is_empty() {
            if let Some(p) = this.pace {
                if this.wait(p, cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        if let Some(piece) = this.pieces.front_mut() {
            let data = match piece {
                Piece::Data(_) => match this.pieces.pop_front() {
                    Some(Piece::Data(d)) => d,
                    _ => Bytes::new(),
                },
                Piece::Spaces(left) => {
                    let n = (*left).min(SPACES.len());
                    *left -= n;
                    if *left == 0 {
                        this.pieces.pop_front();
                    }
                    Bytes::from_static(&SPACES[..n])
                }
            };
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if matches!(this.ending, Ending::Complete) {
            return Poll::Ready(None);
        }
        if !this.paused {
            if this.wait(PAUSE_BEFORE_CUT, cx).is_pending() {
                return Poll::Pending;
            }
            this.paused = true;
        }
        match std::mem::replace(&mut this.ending, Ending::Complete) {
            Ending::Reset(fd) => {
                if let Some(fd) = fd {
                    set_zero_linger(&fd);
                }
                Poll::Ready(Some(Err(io::Error::other("emulated connection reset"))))
            }
            _ => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty() && matches!(self.ending, Ending::Complete)
    }

    fn size_hint(&self) -> SizeHint {
        self.exact_len
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Makes the socket's last close send a TCP RST instead of a FIN (`fd`: a duplicate of the
/// connection's socket, which shares its options).
fn set_zero_linger(fd: &OwnedFd) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    if let Err(e) = setsockopt(fd, sockopt::Linger, &linger) {
        tracing::debug!("emulator: SO_LINGER failed: {e}");
    }
}
