//! `loadgen`: a load generator for Switchboard's native protocol (`/ws`).
//!
//! Seven scenarios, each bounded in count and time, each printing one JSON
//! summary object on stdout (human progress goes to stderr):
//!
//! - `idle`: opens N sockets, each sends `hello` and one `join`, then holds
//!   them (answering the server's pings). Reports the connect rate and, with
//!   `--server-pid`, the server's RSS before and after, i.e. RSS per connection.
//! - `relay`: P pairs; each A sends `signal`s to its B carrying a sequence
//!   number and a send timestamp; B checks order and records the one-way
//!   latency. Open-loop at `--rate` msgs/s in total, or saturating (`--rate 0`)
//!   with at most `--window` signals in flight per pair.
//! - `connect`: a connect storm: connect, `hello`, `welcome`, close, with
//!   `--concurrency` workers.
//! - `pairing`: N rendezvous workers (round robin over the URLs) each send
//!   `pair` (all at once or at `--rate`) and wait for `paired`; reports the
//!   `pair` → `paired` latency, pairings/s, the time until all are paired, and
//!   checks that every worker was paired exactly once and symmetrically.
//! - `stun`: STUN Binding requests over UDP from a few sockets, each keeping
//!   `--window` requests in flight; reports responses/s and round-trip times.
//! - `rolling`: P pairs of resumable sessions signal while the nodes behind
//!   them restart; every peer resumes its session wherever it lands; checks
//!   that no signal is lost, duplicated or reordered (see its module).
//! - `dashboard`: the dashboard door (`/ws/`): N subscribers of its room
//!   list; the latency of a room change to every subscriber, and the
//!   nodes' CPU for the periodic list (see its module).
//!
//! Sockets can be bound to a range of source addresses (`--source-ips
//! 127.0.0.2-127.0.0.40`, round robin) so that tens of thousands of sockets do
//! not exhaust the ephemeral ports of one address. One process may hold at
//! most as many sockets as its open-files limit allows (20,000 here, so about
//! 19,000 connections); run several processes, each with its own source range,
//! for more (see loadtest/README.md).
//!
//! Exit status: 0 when the run was clean, 3 when it completed but saw
//! failures, losses, duplicates or reordering, 1 when it could not run.
//!
//! The code: this file parses the command line and runs one scenario. Each
//! scenario is a module ([`idle`], [`relay`], [`connect`], [`pairing`],
//! [`stun`], [`dashboard`], [`rolling`]) holding its flags and its run; they share [`wire`] (the protocol
//! messages the generator sends and reads), [`dial`] (sockets, source
//! addresses and the WebSocket set-up), [`report`] (histograms, failure counts
//! and figures for the JSON summary) and [`procstat`] (CPU time and RSS of the
//! servers, of the generator and of the machine, from /proc).

mod connect;
mod dashboard;
mod dial;
mod idle;
mod pairing;
mod procstat;
mod relay;
mod report;
mod rolling;
mod stun;
mod wire;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use connect::{connect, ConnectArgs};
use dashboard::{dashboard, DashboardArgs};
use idle::{idle, IdleArgs};
use pairing::{pairing, PairingArgs};
use relay::{relay, RelayArgs};
use rolling::{rolling, RollingArgs};
use stun::{stun, StunArgs};

/// Load generator for Switchboard's native WebSocket protocol.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N sockets (hello + one join each) and hold them; report connect rate and server RSS.
    Idle(IdleArgs),
    /// P pairs exchanging signals; report throughput, loss, order and latency.
    Relay(RelayArgs),
    /// Connect storm: connect, hello, welcome, close; report rate and failures.
    Connect(ConnectArgs),
    /// Rendezvous: N workers send `pair` and wait for `paired`; report latency and check symmetry.
    Pairing(PairingArgs),
    /// STUN Binding requests over UDP at a node's STUN port; report responses/s and RTT.
    Stun(StunArgs),
    /// Resumable pairs signal across node restarts; check nothing is lost, duplicated or reordered.
    Rolling(RollingArgs),
    /// Dashboard door: N subscribers of the room list; change latency and the periodic list's cost.
    Dashboard(DashboardArgs),
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Target WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Several target URLs, comma-separated (overrides --url); connections are
    /// spread round robin, and in `relay` A and B of a pair sit on different URLs.
    #[arg(long, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// Source addresses to bind sockets to, round robin: a range `A-B` of IPv4
    /// addresses, or a comma-separated list.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Server process ids whose RSS and CPU time are reported (summed), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Speak MessagePack (subprotocol switchboard.v1.msgpack) instead of JSON.
    #[arg(long)]
    pub msgpack: bool,
    /// Connections set up at once (connect storm: concurrent workers). Above
    /// the server's listen backlog (128 with tokio's default), SYNs overflow
    /// the accept queue and are retried after 1 s.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Timeout of each step (TCP connect, upgrade, welcome, joined), in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub step_timeout_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.scenario {
            Scenario::Idle(a) => idle(a).await,
            Scenario::Relay(a) => relay(a).await,
            Scenario::Connect(a) => connect(a).await,
            Scenario::Pairing(a) => pairing(a).await,
            Scenario::Stun(a) => stun(a).await,
            Scenario::Dashboard(a) => dashboard(a).await,
            Scenario::Rolling(a) => rolling(a).await,
        }
    });
    // Sockets still held by aborted tasks are dropped here, bounded.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok((summary, ok)) => {
            println!("{summary}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
