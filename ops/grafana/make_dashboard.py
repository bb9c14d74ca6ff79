#!/usr/bin/env python3
"""Writes ops/grafana/imagejobs.json, the Grafana dashboard of the pipeline and of RabbitMQ.

The JSON is generated so that every panel has the same shape; edit this file and run it
(`python3 ops/grafana/make_dashboard.py`) rather than editing the JSON by hand.
"""
import json
import os

DS = {"type": "prometheus", "uid": "prometheus"}


def panel(pid, title, exprs, x, y, unit="short", w=8, h=8, kind="timeseries", desc=""):
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": l}
            for i, (e, l) in enumerate(exprs)
        ],
    }


def row(pid, title, y):
    return {"id": pid, "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def q(quantile, metric, by, match=""):
    sel = "{" + match + "}" if match else ""
    return (f"histogram_quantile({quantile}, sum by (le{', ' + by if by else ''}) "
            f"(rate({metric}_bucket{sel}[1m])))")


panels = [
    row(1, "Pipeline", 0),
    panel(2, "Submits by outcome", [("sum by (outcome) (rate(imagejobs_submits_total[1m]))", "{{outcome}}")], 0, 1, "reqps"),
    panel(3, "Jobs settled by status", [("sum by (status) (rate(imagejobs_jobs_total[1m]))", "{{status}}")], 8, 1, "ops"),
    panel(4, "Jobs in flight", [("sum by (instance) (imagejobs_jobs_in_flight)", "{{instance}}")], 16, 1),
    panel(5, "Submit latency", [
        (q(0.5, "imagejobs_http_request_duration_seconds", "", 'route="/api/v1/job"'), "p50"),
        (q(0.99, "imagejobs_http_request_duration_seconds", "", 'route="/api/v1/job"'), "p99"),
    ], 0, 9, "s"),
    panel(6, "Stage duration p99", [(q(0.99, "imagejobs_stage_duration_seconds", "stage"), "{{stage}}")], 8, 9, "s",
          desc="blob PUT, worker submit, worker run, outcome event confirm"),
    panel(7, "Publish confirm p99", [(q(0.99, "imagejobs_publish_confirm_duration_seconds", "message"), "{{message}}")], 16, 9, "s"),
    panel(8, "Retries by tier", [("sum by (tier) (rate(imagejobs_retries_total[1m]))", "{{tier}}")], 0, 17, "ops"),
    panel(9, "Dead letters by reason", [("sum by (reason) (rate(imagejobs_dead_letters_total[5m]))", "{{reason}}")], 8, 17, "ops"),
    panel(10, "Rejections (429/503) by reason", [("sum by (reason) (rate(imagejobs_rejections_total[1m]))", "{{reason}}")], 16, 17, "reqps"),
    panel(11, "Job index", [("sum by (instance) (imagejobs_index_jobs)", "jobs {{instance}}")], 0, 25),
    panel(12, "Index memory", [("sum by (instance) (imagejobs_index_bytes)", "{{instance}}")], 8, 25, "bytes"),
    panel(13, "Index follower lag", [("max by (instance) (imagejobs_index_follower_lag_seconds)", "{{instance}}")], 16, 25, "s"),
    panel(14, "Broker connections", [
        ("sum by (job) (imagejobs_broker_connected)", "connected {{job}}"),
        ("sum by (job) (increase(imagejobs_broker_connections_total[5m]))", "connections made {{job}} (5m)"),
        ("sum by (job) (imagejobs_broker_blocked)", "blocked {{job}}"),
    ], 0, 33, w=12),
    panel(15, "Stub services", [
        ("sum by (endpoint) (rate(imagejobs_stub_requests_total[1m]))", "{{endpoint}}"),
        ("sum by (kind) (rate(imagejobs_stub_faults_injected_total[1m]))", "fault {{kind}}"),
    ], 12, 33, "reqps", w=12),
    row(16, "RabbitMQ", 41),
    panel(17, "Queue depth (ready)", [("sum by (queue) (rabbitmq_detailed_queue_messages_ready)", "{{queue}}")], 0, 42),
    panel(18, "Unacked", [("sum by (queue) (rabbitmq_detailed_queue_messages_unacked)", "{{queue}}")], 8, 42),
    panel(19, "Dead queue length", [('sum(rabbitmq_detailed_queue_messages{queue=~".*[.]jobs[.]dead"})', "dead")], 16, 42, kind="stat"),
    panel(20, "Publish and deliver rates", [
        ("sum(rate(rabbitmq_global_messages_received_total[1m]))", "published"),
        ("sum(rate(rabbitmq_global_messages_confirmed_total[1m]))", "confirmed"),
        ("sum(rate(rabbitmq_global_messages_delivered_total[1m]))", "delivered"),
        ("sum(rate(rabbitmq_global_messages_acknowledged_total[1m]))", "acked"),
    ], 0, 50, "ops", w=12),
    panel(21, "Consumers and their utilisation", [
        ("sum by (queue) (rabbitmq_detailed_queue_consumers)", "consumers {{queue}}"),
        ("avg by (queue) (rabbitmq_detailed_queue_consumer_utilisation)", "utilisation {{queue}}"),
    ], 12, 50, w=12),
]

dashboard = {
    "uid": "imagejobs",
    "title": "imagejobs",
    "description": "The image-job pipeline (ingress, consumers, stubs) and its RabbitMQ cluster",
    "tags": ["imagejobs", "rabbitmq"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "5s",
    "time": {"from": "now-30m", "to": "now"},
    "panels": panels,
    "templating": {"list": []},
    "annotations": {"list": []},
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagejobs.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
