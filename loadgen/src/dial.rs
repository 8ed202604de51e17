//! Dialing: resolving the target URLs (loopback only), binding sockets to
//! the `--source-ips` round robin, the WebSocket upgrade, `hello` and
//! `join`, closing; error kinds as the JSON summaries count them; and the
//! open-files check before a scenario opens its sockets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant as TokioInstant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::wire::{decode, encode, Hello, Join, SUBPROTOCOL_MSGPACK};
use crate::Common;

pub type Ws = WebSocketStream<TcpStream>;

/// A resolved target.
#[derive(Debug, Clone)]
pub struct Target {
    url: String,
    addr: SocketAddr,
}

/// Opens sockets to the targets from the configured source addresses.
pub struct Dialer {
    pub targets: Vec<Target>,
    sources: Vec<IpAddr>,
    next_src: AtomicUsize,
    msgpack: bool,
    step: Duration,
    read_buf: usize,
}

fn parse_sources(s: &str) -> Result<Vec<IpAddr>> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().context("start of --source-ips range")?;
        let b: Ipv4Addr = b.trim().parse().context("end of --source-ips range")?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65_535 {
            bail!("--source-ips range must go upwards and hold at most 65,536 addresses");
        }
        Ok((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect())
    } else {
        s.split(',')
            .map(|p| {
                p.trim()
                    .parse::<IpAddr>()
                    .with_context(|| format!("bad source address `{p}`"))
            })
            .collect()
    }
}

impl Dialer {
    pub async fn new(c: &Common, read_buf: usize) -> Result<Self> {
        let urls: Vec<String> = if c.urls.is_empty() {
            vec![c.url.clone()]
        } else {
            c.urls.iter().filter(|u| !u.is_empty()).cloned().collect()
        };
        if urls.is_empty() {
            bail!("no target URL");
        }
        let mut targets = Vec::new();
        for url in urls {
            let req = url
                .as_str()
                .into_client_request()
                .with_context(|| format!("bad URL `{url}`"))?;
            let uri = req.uri();
            if uri.scheme_str() != Some("ws") {
                bail!("only ws:// URLs are supported (`{url}`)");
            }
            let host = uri
                .host()
                .ok_or_else(|| anyhow!("URL `{url}` has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await
                .with_context(|| format!("cannot resolve `{host}`"))?
                .next()
                .ok_or_else(|| anyhow!("`{host}` resolves to nothing"))?;
            if !addr.ip().is_loopback() {
                bail!("{addr} is not a loopback address; this generator only targets this machine");
            }
            targets.push(Target { url, addr });
        }
        let sources = match &c.source_ips {
            Some(s) => parse_sources(s)?,
            None => Vec::new(),
        };
        for t in &targets {
            if sources.iter().any(|s| s.is_ipv4() != t.addr.is_ipv4()) {
                bail!(
                    "source addresses and target {} differ in IP version",
                    t.addr
                );
            }
        }
        Ok(Self {
            targets,
            sources,
            next_src: AtomicUsize::new(0),
            msgpack: c.msgpack,
            step: Duration::from_millis(c.step_timeout_ms),
            read_buf,
        })
    }

    pub fn urls(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.url.as_str()).collect()
    }

    /// TCP connect and WebSocket upgrade to target `ti` (modulo the target count).
    pub async fn dial(&self, ti: usize) -> Result<Ws, String> {
        let t = &self.targets[ti % self.targets.len()];
        let sock = if t.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| io_kind("socket", &e))?;
        if !self.sources.is_empty() {
            let i = self.next_src.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            sock.set_reuseaddr(true)
                .map_err(|e| io_kind("socket", &e))?;
            sock.bind(SocketAddr::new(self.sources[i], 0))
                .map_err(|e| io_kind("bind", &e))?;
        }
        let stream = timeout(self.step, sock.connect(t.addr))
            .await
            .map_err(|_| "connect-timeout".to_string())?
            .map_err(|e| io_kind("connect", &e))?;
        let _ = stream.set_nodelay(true);
        let mut req = t
            .url
            .as_str()
            .into_client_request()
            .map_err(|_| "bad-url".to_string())?;
        if self.msgpack {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(SUBPROTOCOL_MSGPACK),
            );
        }
        let cfg = WebSocketConfig::default()
            .read_buffer_size(self.read_buf)
            .write_buffer_size(16 * 1024);
        let (ws, _resp) = timeout(
            self.step,
            tokio_tungstenite::client_async_with_config(req, stream, Some(cfg)),
        )
        .await
        .map_err(|_| "upgrade-timeout".to_string())?
        .map_err(|e| match e {
            WsError::Http(r) => format!("http-{}", r.status().as_u16()),
            WsError::Io(e) => io_kind("upgrade", &e),
            _ => "upgrade-failed".to_string(),
        })?;
        Ok(ws)
    }

    /// Sends `m` and waits for the answer of type `want`, skipping other messages.
    async fn request(&self, ws: &mut Ws, m: Message, want: &str) -> Result<(), String> {
        ws.send(m).await.map_err(|e| ws_kind("send", &e))?;
        let deadline = TokioInstant::now() + self.step;
        loop {
            let frame = match timeout(deadline - TokioInstant::now(), ws.next()).await {
                Err(_) => return Err(format!("{want}-timeout")),
                Ok(None) => return Err("closed".into()),
                Ok(Some(Err(e))) => return Err(ws_kind("read", &e)),
                Ok(Some(Ok(f))) => f,
            };
            if let Message::Close(c) = &frame {
                return Err(match c {
                    Some(c) => format!("closed-{}", u16::from(c.code)),
                    None => "closed".into(),
                });
            }
            match decode(&frame) {
                None => continue,
                Some(Err(_)) => return Err("undecodable".into()),
                Some(Ok(inc)) if inc.ty == want => return Ok(()),
                Some(Ok(inc)) if inc.ty == "error" => {
                    return Err(format!("error-{}", inc.code.unwrap_or_default()))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Dials target `ti` and sends `hello` as `peer`, waiting for `welcome`.
    pub async fn hello(&self, ti: usize, peer: &str) -> Result<Ws, String> {
        let mut ws = self.dial(ti).await?;
        let hello = encode(
            self.msgpack,
            &Hello {
                ty: "hello",
                peer_id: peer,
            },
        );
        self.request(&mut ws, hello, "welcome").await?;
        Ok(ws)
    }

    pub async fn join(&self, ws: &mut Ws, room: &str) -> Result<(), String> {
        let join = encode(self.msgpack, &Join { ty: "join", room });
        self.request(ws, join, "joined").await
    }
}

fn io_kind(step: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let k = match e.kind() {
        K::ConnectionRefused => "refused",
        K::ConnectionReset => "reset",
        K::AddrInUse => "addr-in-use",
        K::AddrNotAvailable => "addr-not-available",
        K::TimedOut => "timeout",
        K::BrokenPipe => "broken-pipe",
        K::UnexpectedEof => "eof",
        _ => {
            if e.raw_os_error() == Some(24) {
                "too-many-open-files"
            } else {
                "io"
            }
        }
    };
    format!("{step}-{k}")
}

pub fn ws_kind(step: &str, e: &WsError) -> String {
    match e {
        WsError::Io(io) => io_kind(step, io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => format!("{step}-closed"),
        WsError::Protocol(_) => format!("{step}-protocol"),
        _ => format!("{step}-error"),
    }
}

/// Closes a socket politely, bounded in time.
pub async fn close_ws(mut ws: Ws) {
    let _ = timeout(Duration::from_secs(2), async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// The soft limit on open files of this process.
fn nofile_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub fn check_sockets(n: usize) -> Result<()> {
    if let Some(lim) = nofile_limit() {
        if n as u64 + 64 > lim {
            bail!(
                "{n} sockets need more than this process's open-files limit ({lim}) allows; \
                 run several loadgen processes with distinct --source-ips ranges"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_are_a_range_or_a_list() {
        let range = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(range, want);
        let list = parse_sources("127.0.0.5, ::1").unwrap();
        assert_eq!(
            list,
            [
                "127.0.0.5".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err(), "downwards");
        assert!(
            parse_sources("127.0.0.1-127.1.0.1").is_err(),
            "65,537 addresses"
        );
        assert!(parse_sources("localhost").is_err());
    }

    #[test]
    fn error_kinds_name_the_step() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            io_kind("connect", &Error::from(ErrorKind::ConnectionRefused)),
            "connect-refused"
        );
        assert_eq!(
            io_kind("socket", &Error::from_raw_os_error(24)),
            "socket-too-many-open-files"
        );
        assert_eq!(ws_kind("read", &WsError::ConnectionClosed), "read-closed");
    }
}
