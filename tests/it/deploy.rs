//! The deployment files we ship beside the service: the Grafana dashboard reads only series the
//! service exports, grouped by labels those series carry, and the Prometheus file scrapes the
//! replicas docker-compose.yml runs.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::TestApp;
use serde_json::{Value, json};

/// The metric names in a PromQL expression: identifiers followed by a selector `{…}`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if c == '{' && !word.is_empty() && !word.starts_with(|c: char| c.is_ascii_digit()) {
            names.push(word.clone());
        }
        word.clear();
    }
    names
}

/// The labels of every `by (…)` in a PromQL expression.
fn grouped_by(expr: &str) -> BTreeSet<String> {
    expr.match_indices("by (")
        .flat_map(|(at, _)| {
            let rest = &expr[at + 4..];
            rest[..rest.find(')').unwrap()].split(',').map(|l| l.trim().to_owned()).collect::<Vec<_>>()
        })
        .collect()
}

/// `name_bucket` → `name`, as a histogram's family is named.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

/// Per sample name in a Prometheus text page, the label names its samples carry.
fn labels_by_sample(page: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.split_once('}').unwrap().0),
            None => (line.split_whitespace().next().unwrap(), ""),
        };
        let names = labels.split("\",").filter_map(|pair| pair.split_once('=')).map(|(k, _)| k.trim().to_owned());
        seen.entry(name.to_owned()).or_default().extend(names);
    }
    seen
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_series_the_service_exports_by_labels_they_carry() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/grafana/ktrdr-ops.json").unwrap()).unwrap();
    let app = TestApp::spawn_with_sim(|c| c.sim.training_workers = 1).await;
    // Work of every kind, so that most families have samples: a load, a training, a cancelled dummy.
    let (_, load) = app.post("/api/v1/data/load", json!({ "symbol": "AAPL", "timeframe": "1d", "mode": "tail" })).await;
    let load = load["data"]["operation_id"].as_str().unwrap().to_owned();
    app.wait_for_status(&load, "completed", Duration::from_secs(10)).await;
    let body = json!({ "symbols": ["AAPL"], "timeframes": ["1d"], "strategy_name": "example_mlp" });
    let (_, training) = app.post("/api/v1/trainings/start", body).await;
    let training = training["task_id"].as_str().unwrap().to_owned();
    app.wait_for_status(&training, "completed", Duration::from_secs(30)).await;
    let dummy = app.start_dummy(1000, 50).await;
    app.wait_for_status(&dummy, "running", Duration::from_secs(5)).await;
    app.delete(&format!("/api/v1/operations/{dummy}")).await;
    let page = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let samples = labels_by_sample(&page);
    let declared: BTreeSet<&str> = ktrdr_ops::metrics::family_names().collect();

    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{title}: no place on the grid");
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: no series in {expr}");
            let mut carried = BTreeSet::new();
            let mut any_sampled = false;
            for name in &names {
                queried += 1;
                let known = declared.contains(family(name)) || samples.contains_key(name.as_str());
                assert!(known, "{title}: `{name}` is not a series the service exports");
                if let Some(labels) = samples.get(name.as_str()) {
                    any_sampled = true;
                    carried.extend(labels.iter().cloned());
                }
            }
            // Prometheus adds job and instance to every series it scrapes.
            carried.extend(["job", "instance"].map(str::to_owned));
            if any_sampled {
                let missing: Vec<_> = grouped_by(expr).into_iter().filter(|l| !carried.contains(l)).collect();
                assert!(missing.is_empty(), "{title}: grouped by {missing:?}, which {names:?} do not carry");
            }
        }
    }
    assert!(queried >= 20, "only {queried} series queried");
}

#[tokio::test]
async fn the_prometheus_file_scrapes_the_replicas_of_docker_compose() {
    let prometheus: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string("deploy/prometheus.yml").unwrap()).unwrap();
    let compose: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string("docker-compose.yml").unwrap()).unwrap();
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    let targets: Vec<&str> =
        job["static_configs"][0]["targets"].as_sequence().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let replicas: Vec<String> = compose["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, service)| service["environment"]["KTRDR_OPS__NODE__ID"].is_string())
        .map(|(name, _)| format!("{}:8000", name.as_str().unwrap()))
        .collect();
    assert_eq!(replicas.len(), 2, "docker-compose.yml runs two replicas");
    assert_eq!(targets, replicas.iter().map(String::as_str).collect::<Vec<_>>());
}
