//! `--wait`: follows the api's live feed (`GET /events`, server-sent events) until each instance
//! reaches where it should, drawing a progress bar per instance on a terminal and printing
//! plain lines otherwise. The feed is opened before the states are read, so no move is missed;
//! the states are read again every few seconds in case the feed was interrupted.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::api::Api;
use super::{Failure, Outcome};

/// The live feed of the caller's organization.
pub struct Feed {
    response: reqwest::Response,
    buffer: String,
}

impl Feed {
    /// From now on.
    pub async fn open(api: &Api) -> Outcome<Self> {
        Self::open_at(api, "/events").await
    }

    /// `path`: `/events`, or `/events?after=N` to replay what the feed still holds after N.
    pub async fn open_at(api: &Api, path: &str) -> Outcome<Self> {
        let request = api.request(reqwest::Method::GET, path).header("accept", "text/event-stream");
        let response = request.send().await.map_err(|error| api.unreachable(&error))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(Failure::Request(format!(
                "the live feed was refused (HTTP {}): {}",
                status.as_u16(),
                body.trim()
            )));
        }
        Ok(Self { response, buffer: String::new() })
    }

    /// The next event's type and envelope; `None` when the feed ends.
    pub async fn next(&mut self) -> Outcome<Option<(String, Value)>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut kind = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        kind = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if kind.is_empty() || data.is_empty() {
                    continue;
                }
                let envelope = serde_json::from_str(&data).unwrap_or(Value::Null);
                return Ok(Some((kind, envelope)));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n")),
                Ok(None) => return Ok(None),
                Err(error) => return Err(Failure::Request(format!("the live feed was cut: {error}"))),
            }
        }
    }
}

/// Where an instance stands for a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Waiting,
    Done,
    Failed,
}

/// One line or one bar per instance.
enum Display {
    /// The group draws the bars together; kept for as long as they are.
    Bars {
        _group: indicatif::MultiProgress,
        bars: BTreeMap<String, indicatif::ProgressBar>,
    },
    Lines,
}

impl Display {
    fn new(ids: &[String]) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::Lines;
        }
        let bars = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
        let mut map = BTreeMap::new();
        for id in ids {
            let bar = bars.add(indicatif::ProgressBar::new(100));
            bar.set_style(style.clone());
            bar.set_prefix(id.clone());
            map.insert(id.clone(), bar);
        }
        Self::Bars { _group: bars, bars: map }
    }

    fn show(&self, id: &str, state: &str, percent: u64, reason: Option<&str>) {
        match self {
            Self::Bars { bars, .. } => {
                if let Some(bar) = bars.get(id) {
                    bar.set_position(percent.min(100));
                    bar.set_message(reason.map_or_else(|| state.to_owned(), |reason| format!("{state}: {reason}")));
                }
            }
            Self::Lines => match reason {
                Some(reason) => eprintln!("{id} {state} ({percent}%): {reason}"),
                None => eprintln!("{id} {state} ({percent}%)"),
            },
        }
    }

    fn finish(&self) {
        if let Self::Bars { bars, .. } = self {
            for bar in bars.values() {
                bar.finish();
            }
        }
    }
}

/// Waits until `judge` says every instance of `ids` is done (or one failed, or `patience` ran
/// out), showing each move; returns the instances as last read.
pub async fn instances(
    api: &Api,
    ids: &[String],
    judge: fn(&str) -> Verdict,
    patience: Duration,
) -> Outcome<Vec<Value>> {
    let mut feed = Feed::open(api).await?;
    let display = Display::new(ids);
    let mut seen: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let started = Instant::now();
    let mut instances = Vec::new();
    let mut resync = true;
    loop {
        if resync {
            instances.clear();
            for id in ids {
                instances.push(api.get(&format!("/instances/{id}")).await?);
            }
            for instance in &instances {
                let id = instance["id"].as_str().unwrap_or_default().to_owned();
                let state = instance["state"].as_str().unwrap_or("unknown").to_owned();
                let percent = instance["progress_percent"].as_u64().unwrap_or(0);
                if seen.get(&id) != Some(&(state.clone(), percent)) {
                    display.show(&id, &state, percent, instance["failure_reason"].as_str());
                    seen.insert(id, (state, percent));
                }
            }
        }
        let verdicts: Vec<Verdict> = seen.values().map(|(state, _)| judge(state)).collect();
        if let Some((id, (state, _))) = seen.iter().find(|(_, (state, _))| judge(state) == Verdict::Failed) {
            display.finish();
            let reason = instances
                .iter()
                .find(|instance| instance["id"] == id.as_str())
                .and_then(|instance| instance["failure_reason"].as_str())
                .map(|reason| format!(": {reason}"))
                .unwrap_or_default();
            return Err(Failure::Request(format!("instance {id} is {state}{reason}")));
        }
        if verdicts.len() == ids.len() && verdicts.iter().all(|verdict| *verdict == Verdict::Done) {
            display.finish();
            return Ok(instances);
        }
        let Some(left) = patience.checked_sub(started.elapsed()) else {
            display.finish();
            return Err(Failure::Request(format!("not done after {} s (see `qm ps`)", patience.as_secs())));
        };
        match tokio::time::timeout(left.min(Duration::from_secs(5)), feed.next()).await {
            Ok(Ok(Some((kind, envelope)))) => {
                let data = &envelope["data"];
                let id = data["instance_id"].as_str().unwrap_or_default();
                resync = kind == "instance.state_changed" && ids.iter().any(|wanted| wanted == id);
            }
            Ok(Ok(None) | Err(_)) => {
                feed = Feed::open(api).await?;
                resync = true;
            }
            Err(_) => resync = true,
        }
    }
}
