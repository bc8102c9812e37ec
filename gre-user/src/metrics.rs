//! Prometheus metrics of an instance, served by `gre daemon` (`GET /metrics`, OpenMetrics text):
//! read from the pinned maps at each scrape, so they are exactly what `gre show -j` reports.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header::CONTENT_TYPE, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use log::{info, warn};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::show;

/// Reads the instance's maps at every scrape.
#[derive(Debug)]
struct Instance(String);

/// One metric family: its name, help, type, and a value per label set.
fn family<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counter: bool,
    values: impl IntoIterator<Item = ([(&'static str, String); N], u64)>,
) -> Result<(), std::fmt::Error> {
    let kind = if counter { MetricType::Counter } else { MetricType::Gauge };
    let mut m = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in values {
        if counter {
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        } else {
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

impl Collector for Instance {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = match show::report(&self.0) {
            Ok(r) => r,
            Err(err) => {
                warn!("metrics: {err:#}");
                return Ok(());
            }
        };
        let per_tunnel = |f: fn(&show::TunnelReport) -> u64| r.tunnels.iter().map(move |t| ([("tunnel", t.name.clone())], f(t)));
        family(&mut e, "gre_tunnel_rx_packets", "Packets decapsulated", true, per_tunnel(|t| t.rx_packets))?;
        family(&mut e, "gre_tunnel_rx_bytes", "Inner bytes decapsulated", true, per_tunnel(|t| t.rx_bytes))?;
        family(&mut e, "gre_tunnel_tx_packets", "Packets encapsulated", true, per_tunnel(|t| t.tx_packets))?;
        family(&mut e, "gre_tunnel_tx_bytes", "Inner bytes encapsulated", true, per_tunnel(|t| t.tx_bytes))?;
        family(&mut e, "gre_tunnel_fast_rx_packets", "Of rx_packets, decapsulated straight to a LAN port", true, per_tunnel(|t| t.fast_rx))?;
        family(&mut e, "gre_tunnel_fast_tx_packets", "Of tx_packets, encapsulated straight from a LAN port", true, per_tunnel(|t| t.fast_tx))?;
        family(&mut e, "gre_tunnel_reassembled_packets", "GRE that arrived in fragments, decapsulated by gre daemon", true, per_tunnel(|t| t.reassembled))?;
        let states = ["up", "down", "unknown"];
        family(
            &mut e,
            "gre_tunnel_state",
            "1 for the tunnel's state (keepalives or NHS registration)",
            false,
            r.tunnels.iter().flat_map(|t| states.iter().map(move |s| ([("tunnel", t.name.clone()), ("state", (*s).to_string())], u64::from(t.state == *s)))),
        )?;
        let keepalives = r.tunnels.iter().flat_map(|t| {
            [("sent", t.keepalives_sent), ("answered", t.keepalives_answered), ("returned", t.keepalives_returned)]
                .map(|(k, v)| ([("tunnel", t.name.clone()), ("event", k.to_string())], v))
        });
        family(&mut e, "gre_tunnel_keepalives", "Keepalives: ours sent, the remote's answered, ours returned", true, keepalives)?;
        let drops = r.drops.iter().map(|(k, v)| ([("reason", k.clone())], v.as_u64().unwrap_or(0)));
        family(&mut e, "gre_drops", "Packets dropped, by reason", true, drops)?;
        let tunnel_drops =
            r.tunnels.iter().flat_map(|t| t.drops.iter().map(|(k, v)| ([("tunnel", t.name.clone()), ("reason", k.clone())], v.as_u64().unwrap_or(0))));
        family(&mut e, "gre_tunnel_drops", "Packets of a tunnel dropped, by reason", true, tunnel_drops)?;
        let nhrp = r.tunnels.iter().filter(|t| t.nhrp.is_some()).flat_map(|t| {
            [("received", &t.nhrp_received), ("sent", &t.nhrp_sent)].into_iter().flat_map(move |(dir, m)| {
                m.iter().map(move |(k, v)| ([("tunnel", t.name.clone()), ("direction", dir.to_string()), ("type", k.clone())], v.as_u64().unwrap_or(0)))
            })
        });
        family(&mut e, "gre_nhrp_messages", "NHRP messages by direction and type", true, nhrp)?;
        let nhrp_tunnels = || r.tunnels.iter().filter(|t| t.nhrp.is_some());
        family(
            &mut e,
            "gre_nhrp_errors",
            "NHRP messages that did not decode or could not be sent",
            true,
            nhrp_tunnels().map(|t| ([("tunnel", t.name.clone())], t.nhrp_errors)),
        )?;
        // Per peer, by NBMA address (the overlay addresses behind one share its counters).
        let mut seen = std::collections::HashSet::new();
        let by_nbma: Vec<&show::PeerReport> = r.peers.iter().filter(|p| seen.insert((p.tunnel.clone(), p.nbma.clone()))).collect();
        let peer = |f: fn(&show::PeerReport) -> u64| by_nbma.iter().map(move |p| ([("tunnel", p.tunnel.clone()), ("nbma", p.nbma.clone())], f(p)));
        family(&mut e, "gre_peer_rx_packets", "Packets from a peer of a multipoint tunnel", true, peer(|p| p.rx_packets))?;
        family(&mut e, "gre_peer_rx_bytes", "Bytes (after the GRE header) from a peer", true, peer(|p| p.rx_bytes))?;
        family(&mut e, "gre_peer_tx_packets", "Packets to a peer of a multipoint tunnel", true, peer(|p| p.tx_packets))?;
        family(&mut e, "gre_peer_tx_bytes", "Inner bytes to a peer", true, peer(|p| p.tx_bytes))?;
        let kinds = ["static", "dynamic", "incomplete"];
        let peers = r.tunnels.iter().filter(|t| t.remote == "multipoint").flat_map(|t| {
            kinds.iter().map(|k| {
                let n = r.peers.iter().filter(|p| p.tunnel == t.name && p.kind == *k).count();
                ([("tunnel", t.name.clone()), ("kind", (*k).to_string())], u64::try_from(n).unwrap_or(u64::MAX))
            })
        });
        family(&mut e, "gre_peers", "Peers of a multipoint tunnel, by kind", false, peers)?;
        Ok(())
    }
}

/// Serves the metrics of `instance` on `listen` until the task is dropped.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(instance: &str, listen: SocketAddr) -> Result<tokio::task::JoinHandle<()>> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Instance(instance.to_string())));
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("metrics: listening on {listen}"))?;
    info!("metrics on http://{listen}/metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let registry = Arc::clone(&registry);
                    // The scrape walks the maps: on a blocking thread, off the one that runs NHRP.
                    let path = req.uri().path().to_string();
                    async move {
                        Ok::<_, std::convert::Infallible>(tokio::task::spawn_blocking(move || respond(&path, &registry)).await.unwrap_or_else(|e| failed(&e)))
                    }
                });
                if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    log::debug!("metrics connection: {e}");
                }
            });
        }
    }))
}

fn failed(e: &dyn std::fmt::Display) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{e}\n"))));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

fn respond(path: &str, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
        r
    };
    if path != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "metrics are at /metrics\n".to_string());
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
    }
}
