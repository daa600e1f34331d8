//! Log output off the call path: each formatted log line goes into a bounded queue and one
//! thread writes the queue to stderr. A blocked call's log line is formatted while the call is
//! decided; writing it there would put a `write(2)` (and, when journald or a pipe is slow, an
//! unbounded wait) between the decision and the verdict. When the queue is full, lines are
//! dropped and counted, and the next line written says how many: logs may lose lines under a
//! flood, calls never wait for them.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines waiting to be written at most.
pub const QUEUE_LINES: usize = 16_384;
/// Longest the process waits at exit for its queued lines to be written.
const EXIT_FLUSH: Duration = Duration::from_secs(2);

enum Message {
    Line(Vec<u8>),
    /// Everything queued before it is written: say so.
    Flush(SyncSender<()>),
}

/// Hands lines to the writer thread; what `tracing_subscriber::fmt` writes into.
#[derive(Clone)]
pub struct QueuedLog {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

/// Dropping it waits (briefly) until every line queued so far is written: keep it alive until
/// the process's last log line, so nothing said at exit is lost.
pub struct FlushOnDrop {
    tx: SyncSender<Message>,
}

/// A queue of `capacity` lines written to `out` by a thread of its own. Without a thread
/// (the system refused one) lines are counted as dropped.
pub fn start<W: Write + Send + 'static>(out: W, capacity: usize) -> (QueuedLog, FlushOnDrop) {
    let (tx, rx) = sync_channel::<Message>(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&dropped);
    let _thread = std::thread::Builder::new()
        .name("callguard-log".into())
        .spawn(move || write_lines(&rx, out, &counter));
    (
        QueuedLog {
            tx: tx.clone(),
            dropped,
        },
        FlushOnDrop { tx },
    )
}

fn write_lines<W: Write>(rx: &Receiver<Message>, mut out: W, dropped: &AtomicU64) {
    let mut next = rx.recv().ok();
    while let Some(message) = next.take() {
        match message {
            Message::Line(line) => {
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    let _ = writeln!(
                        out,
                        "callguard: {lost} log lines dropped (log output too slow)"
                    );
                }
                // A failed write (stderr closed) cannot be reported anywhere: the line is lost.
                let _ = out.write_all(&line);
            }
            Message::Flush(done) => {
                let _ = out.flush();
                let _ = done.try_send(());
            }
        }
        // Write what is already queued before flushing, so a burst costs one flush.
        next = match rx.try_recv() {
            Ok(message) => Some(message),
            Err(_) => {
                let _ = out.flush();
                rx.recv().ok()
            }
        };
    }
}

impl FlushOnDrop {
    /// Waits (at most 2 s) until every line queued so far is written.
    pub fn flush(&self) {
        let (done_tx, done_rx) = sync_channel::<()>(1);
        // Behind every line queued so far; waits for room if the queue is full.
        if self.tx.send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(EXIT_FLUSH);
        }
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One log event's bytes, sent as one line when the event is written.
pub struct LineBuffer {
    line: Vec<u8>,
    queue: QueuedLog,
}

impl Write for LineBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.line);
        match self.queue.tx.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queue.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for QueuedLog {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer {
            line: Vec::with_capacity(256),
            queue: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink the tests can read, and block by holding its lock.
    #[derive(Clone, Default)]
    struct SharedSink(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedSink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut sink = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            sink.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(sink: &SharedSink) -> String {
        String::from_utf8_lossy(&sink.0.lock().expect("sink")).into_owned()
    }

    #[test]
    fn lines_arrive_whole_and_in_order_and_exit_flushes_them() {
        let sink = SharedSink::default();
        let (log, flush) = start(sink.clone(), 1024);
        for i in 0..500 {
            let mut w = log.make_writer();
            // fmt writes an event in pieces; it must arrive as one line.
            write!(w, "line ").expect("write");
            writeln!(w, "{i}").expect("write");
        }
        drop(flush);
        let expected: String = (0..500).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text(&sink), expected);
    }

    #[test]
    fn a_stuck_output_drops_and_counts_lines_instead_of_blocking() {
        let sink = SharedSink::default();
        let stuck = sink.0.lock().expect("sink");
        let (log, flush) = start(sink.clone(), 4);
        let started = std::time::Instant::now();
        for i in 0..100 {
            writeln!(log.make_writer(), "line {i}").expect("write");
        }
        // 100 events against a queue of 4 and an output that does not move: no waiting.
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(stuck);
        flush.flush();
        writeln!(log.make_writer(), "after").expect("write");
        drop(flush);
        let out = text(&sink);
        assert!(out.contains("log lines dropped"), "{out}");
        assert!(out.ends_with("after\n"), "{out}");
        assert!(out.lines().count() < 100, "{out}");
    }
}
