//! `fake-apiserver`: run the fake Kubernetes API server standalone, for poking at it with
//! kubectl or a locally run `lb`.

use anyhow::Context;
use clap::Parser;
use fake_apiserver::FakeApiServer;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A fake Kubernetes API server (plain HTTP, no auth) for lb's tests and experiments.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// YAML/JSON files to load (server-side applied) at start; CRDs first is wise.
    #[arg(long, num_args = 1..)]
    load: Vec<PathBuf>,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = FakeApiServer::new();
    for f in &args.load {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let objs = server
            .load_yaml(&text)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", f.display()))?;
        eprintln!("loaded {} object(s) from {}", objs.len(), f.display());
    }
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, FakeApiServer::kubeconfig(&url))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    eprintln!("fake-apiserver serving on {url}");
    tokio::select! {
        r = server.serve(listener) => r.context("serving")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
