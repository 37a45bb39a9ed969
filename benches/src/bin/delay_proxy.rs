//! `delay_proxy`: a TCP relay that adds a fixed one-way latency, for
//! benchmarking network filesystems on a kernel without `sch_netem`.
//!
//! ```text
//! delay_proxy --listen 127.0.0.1:2222 --to 127.0.0.1:22 --delay-ms 10
//! delay_proxy --stdio --to 127.0.0.1:22 --delay-ms 10   # ssh ProxyCommand
//! ```
//!
//! Each direction is a reader thread and a writer thread joined by a queue:
//! every chunk read is stamped `read_time + delay` and queued, and the
//! writer sleeps until each chunk's release time, then writes it. The delay
//! is therefore pipelined: any number of chunks can be in flight, so the
//! link has latency but no bandwidth limit of its own, like a long fat
//! pipe. A round trip costs 2 × delay. End of stream is delayed like data
//! and then forwarded as a write shutdown, so half-closes behave as on a
//! real link.
//!
//! Plain threads rather than tokio: tokio's timer (and epoll_wait) round
//! every sleep up to the next millisecond, which measured 22.5 ms instead of
//! 20 ms per round trip at `--delay-ms 10`; `thread::sleep` is accurate to
//! tens of microseconds.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "TCP relay adding a fixed one-way delay to every chunk")]
struct Args {
    /// Address to accept connections on (not with --stdio).
    #[arg(long, required_unless_present = "stdio")]
    listen: Option<SocketAddr>,
    /// Address to forward every connection to.
    #[arg(long)]
    to: SocketAddr,
    /// One-way delay in milliseconds, applied in both directions.
    #[arg(long, default_value_t = 10)]
    delay_ms: u64,
    /// Relay stdin/stdout to `--to` (one connection), e.g. as ssh ProxyCommand.
    #[arg(long, conflicts_with = "listen")]
    stdio: bool,
}

/// Chunks queued per direction before the reader blocks. Bounds memory only:
/// at up to 64 KiB a chunk that is 64 MiB in flight, far above what any
/// delay × rate in these benchmarks needs.
const QUEUE: usize = 1024;

/// Copies `r` to `w` with every chunk held back by `delay`; at end of stream
/// (or on any error) calls `eof(w)`. Returns the writer thread.
fn pump<R, W>(
    mut r: R,
    mut w: W,
    delay: Duration,
    eof: impl FnOnce(&mut W) + Send + 'static,
) -> JoinHandle<()>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    // `None` marks the end of stream.
    let (tx, rx) = mpsc::sync_channel::<(Instant, Option<Vec<u8>>)>(QUEUE);
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((Instant::now() + delay, chunk)).is_err() || n == 0 {
                return;
            }
        }
    });
    thread::spawn(move || {
        // Ends when the reader hung up (its sender dropped) or at EOF/error;
        // dropping `rx` then makes the reader's next send fail.
        for (due, chunk) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            match chunk {
                Some(c) if w.write_all(&c).and_then(|()| w.flush()).is_ok() => {}
                _ => break,
            }
        }
        eof(&mut w);
    })
}

fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(to)?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn shut(s: &mut TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
}

/// Relays one accepted connection to `to`, both ways, until both ends closed.
fn serve(down: TcpStream, to: SocketAddr, delay: Duration) -> io::Result<()> {
    down.set_nodelay(true)?;
    let up = connect(to)?;
    let a = pump(down.try_clone()?, up.try_clone()?, delay, shut);
    let b = pump(up, down, delay, shut);
    let _ = (a.join(), b.join());
    Ok(())
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let delay = Duration::from_millis(args.delay_ms);
    if args.stdio {
        let up = connect(args.to)?;
        pump(io::stdin(), up.try_clone()?, delay, shut);
        let _ = pump(up, io::stdout(), delay, |o| drop(o.flush())).join();
        // The server closed: done, even if stdin is still open.
        std::process::exit(0);
    }
    let listener = TcpListener::bind(args.listen.expect("clap enforces it"))?;
    eprintln!(
        "delay_proxy: {} -> {} with {} ms each way",
        listener.local_addr()?,
        args.to,
        args.delay_ms
    );
    for conn in listener.incoming() {
        let to = args.to;
        match conn {
            Ok(down) => drop(thread::spawn(move || {
                if let Err(e) = serve(down, to, delay) {
                    eprintln!("delay_proxy: connection to {to}: {e}");
                }
            })),
            Err(e) => eprintln!("delay_proxy: accept: {e}"),
        }
    }
    Ok(())
}
