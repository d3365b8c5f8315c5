//! The agent's view of its engine: ready when the engine's `/health` answers 200 (vLLM and the
//! mock engine both serve it), queue depth and in-flight requests from its vLLM-style
//! `/metrics`, GPU metrics through NVML when there are GPUs, and `draining` once the agent was
//! asked to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qm_events::worker::WorkerStatus;
use qm_providers::agent::{AgentStatus, StatusSource, TokenCounters};

use crate::gpu::Gpus;

pub struct EngineStatus {
    engine_url: String,
    client: reqwest::Client,
    gpus: Arc<Gpus>,
    pub draining: Arc<AtomicBool>,
}

impl EngineStatus {
    pub fn new(engine_url: &str, gpus: Arc<Gpus>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap_or_default();
        Self {
            engine_url: engine_url.trim_end_matches('/').to_owned(),
            client,
            gpus,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `vllm:<name>` summed over its label sets, from Prometheus text.
    fn sum(metrics: &str, name: &str) -> f64 {
        let prefix = format!("vllm:{name}");
        let total: f64 = metrics
            .lines()
            .filter(|line| line.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with(['{', ' '])))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        total.max(0.0)
    }

    fn gauge(metrics: &str, name: &str) -> u32 {
        Self::sum(metrics, name) as u32
    }

    /// The share of the KV cache in use (`vllm:kv_cache_usage_perc`, before vLLM 0.10
    /// `vllm:gpu_cache_usage_perc`: a fraction), when the engine exposes it.
    fn kv_cache_usage(metrics: &str) -> Option<f64> {
        ["kv_cache_usage_perc", "gpu_cache_usage_perc"]
            .into_iter()
            .find(|name| metrics.contains(&format!("vllm:{name}")))
            .map(|name| Self::sum(metrics, name).clamp(0.0, 1.0))
    }

    /// The engine's token counters, when it exposes them.
    fn tokens(metrics: &str) -> Option<TokenCounters> {
        if !metrics.contains("vllm:prompt_tokens_total") {
            return None;
        }
        Some(TokenCounters {
            prompt: Self::sum(metrics, "prompt_tokens_total") as u64,
            completion: Self::sum(metrics, "generation_tokens_total") as u64,
        })
    }
}

#[async_trait::async_trait]
impl StatusSource for EngineStatus {
    async fn status(&self) -> AgentStatus {
        let healthy = self
            .client
            .get(format!("{}/health", self.engine_url))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        let metrics = match self.client.get(format!("{}/metrics", self.engine_url)).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let status = if self.draining.load(Ordering::Relaxed) {
            WorkerStatus::Draining
        } else if healthy {
            WorkerStatus::Ready
        } else {
            WorkerStatus::NotReady
        };
        AgentStatus {
            status,
            queue_depth: Self::gauge(&metrics, "num_requests_waiting"),
            in_flight: Self::gauge(&metrics, "num_requests_running"),
            gpus: self.gpus.metrics(),
            tokens: Self::tokens(&metrics),
            kv_cache_usage: Self::kv_cache_usage(&metrics),
        }
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::EngineStatus;

    #[test]
    fn vllm_gauges_are_read_and_summed_over_labels() {
        let metrics = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"a\"} 2\nvllm:num_requests_running{model_name=\"b\"} 1.0\nvllm:num_requests_waiting{model_name=\"a\"} 4\n";
        assert_eq!(EngineStatus::gauge(metrics, "num_requests_running"), 3);
        assert_eq!(EngineStatus::gauge(metrics, "num_requests_waiting"), 4);
        assert_eq!(EngineStatus::gauge("", "num_requests_waiting"), 0);
        let counters = "vllm:prompt_tokens_total{model_name=\"a\"} 120\nvllm:generation_tokens_total{model_name=\"a\"} 45\n\
                        vllm:generation_tokens_total_created 99\n";
        assert_eq!(
            EngineStatus::tokens(counters),
            Some(qm_providers::agent::TokenCounters { prompt: 120, completion: 45 })
        );
        assert_eq!(EngineStatus::tokens(""), None);
        assert_eq!(EngineStatus::kv_cache_usage("vllm:kv_cache_usage_perc{model_name=\"a\"} 0.25\n"), Some(0.25));
        assert_eq!(EngineStatus::kv_cache_usage("vllm:gpu_cache_usage_perc{model_name=\"a\"} 0.5\n"), Some(0.5));
        assert_eq!(EngineStatus::kv_cache_usage("vllm:kv_cache_usage_perc 7\n"), Some(1.0));
        assert_eq!(EngineStatus::kv_cache_usage(""), None);
    }
}
