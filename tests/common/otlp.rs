//! An OpenTelemetry collector on 127.0.0.1: OTLP over HTTP (protobuf), metrics only. It keeps
//! every export it receives, decoded, and answers each with 200.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::wait::Counter;

/// One data point of a metric as the collector last received it.
#[derive(Debug, Clone, PartialEq)]
pub enum Point {
    /// A counter's or a gauge's value.
    Number(f64),
    /// A histogram's count of measurements.
    Histogram { count: u64 },
}

pub struct Collector {
    pub addr: std::net::SocketAddr,
    exports: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    received: Arc<Counter>,
    accept: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let exports = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(Counter::default());
        let accept = tokio::spawn({
            let exports = Arc::clone(&exports);
            let received = Arc::clone(&received);
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    tokio::spawn(serve(tcp, Arc::clone(&exports), Arc::clone(&received)));
                }
            }
        });
        Collector {
            addr,
            exports,
            received,
            accept,
        }
    }

    /// The endpoint to give as the metrics endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/metrics", self.addr)
    }

    /// Waits until `n` exports arrived in all.
    pub async fn wait_exports(&self, n: usize, limit: Duration) -> usize {
        self.received.wait_for(n, limit).await
    }

    /// The names of every metric received so far, sorted, without repeats.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .exports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|e| &e.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| m.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The newest point of metric `name` whose attribute `component` is `component` (with
    /// `None`: a point without attributes).
    pub fn latest(&self, name: &str, component: Option<&str>) -> Option<Point> {
        let exports = self.exports.lock().unwrap();
        let metrics = exports
            .iter()
            .rev()
            .flat_map(|e| &e.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == name);
        for metric in metrics {
            let found = match metric.data.as_ref()? {
                metric::Data::Sum(sum) => number(&sum.data_points, component),
                metric::Data::Gauge(gauge) => number(&gauge.data_points, component),
                metric::Data::Histogram(histogram) => histogram
                    .data_points
                    .iter()
                    .find(|p| matches(&p.attributes, component))
                    .map(|p| Point::Histogram { count: p.count }),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn matches(attributes: &[KeyValue], component: Option<&str>) -> bool {
    let found = attributes
        .iter()
        .find(|a| a.key == "component")
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        });
    match component {
        Some(component) => found == Some(component),
        None => attributes.is_empty(),
    }
}

fn number(
    points: &[opentelemetry_proto::tonic::metrics::v1::NumberDataPoint],
    component: Option<&str>,
) -> Option<Point> {
    let point = points.iter().find(|p| matches(&p.attributes, component))?;
    Some(Point::Number(match point.value? {
        number_data_point::Value::AsInt(v) => v as f64,
        number_data_point::Value::AsDouble(v) => v,
    }))
}

/// Serves HTTP/1.1 requests on one connection: each body is an export, answered with 200.
async fn serve(
    mut tcp: TcpStream,
    exports: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    received: Arc<Counter>,
) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("the exporter sends a content-length");
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..head_end + length).skip(head_end).collect();
        let export = ExportMetricsServiceRequest::decode(&body[..])
            .expect("the exporter sends an OTLP protobuf export");
        exports.lock().unwrap().push(export);
        received.bump();
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if tcp.write_all(answer).await.is_err() {
            return;
        }
    }
}
