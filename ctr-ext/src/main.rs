//! `ctr-obd`: the ctr extensions for overlaybd images through containerd's API
//! (`snapshotter.md` §10):
//!
//! * `rpull`: a lazy pull through the overlaybd snapshotter (no layer data is downloaded);
//! * `obdconv`: an image in containerd's store converted to overlaybd in user space;
//! * `record-trace`: an overlaybd image with an acceleration layer (a recorded trace) on top;
//! * `push`: an image pushed to a registry, also when its layers were pulled lazily.
//!
//! Modules: [`cli`] (flags), [`containerd`] (client, namespace, lease, bounded calls),
//! [`content`] (content store), [`images`] (image records), [`manifest`] (image documents),
//! [`registry`] (registry reads), [`unpack`] (layers through a snapshotter), [`rpull`],
//! [`obdconv`], [`push`], [`record`] (record-trace) with [`accel`] (the acceleration layer), [`runspec`]
//! (the container's runtime spec) and [`cni`] (its network), [`bounded`] (`--timeout` and
//! signals), [`error`].

mod accel;
mod bounded;
mod cli;
mod cni;
mod containerd;
mod content;
mod error;
mod images;
mod manifest;
mod obdconv;
mod push;
mod record;
mod registry;
mod rpull;
mod runspec;
mod unpack;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ctr-obd: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        match &cli.command {
            Command::Rpull(a) => rpull::run(&cli.address, &cli.namespace, cli.timeout, a).await,
            Command::Obdconv(a) => obdconv::run(&cli.address, &cli.namespace, cli.timeout, a).await,
            Command::RecordTrace(a) => record::run(&cli.address, &cli.namespace, cli.timeout, a).await,
            Command::Push(a) => push::run(&cli.address, &cli.namespace, cli.timeout, a).await,
        }
    });
    // a layer build cut short by --timeout may still run on a blocking thread: do not wait for it
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
        }
        Err(e) => {
            eprintln!("ctr-obd: {e}");
            std::process::exit(1);
        }
    }
}
