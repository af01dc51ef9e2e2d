"""Prometheus metrics of the bot process, in a registry owned by the container (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ACK_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("chatops_http_requests_total", "HTTP requests served",
                                     ["path", "status"], registry=r)
        self.slack_rejected = Counter("chatops_slack_requests_rejected_total",
                                      "Slack requests refused before Bolt (body limits, signature, malformed payload)",
                                      ["reason"], registry=r)
        self.body_reads = Gauge("chatops_http_body_reads_in_progress",
                                "Request bodies being read before their signature is checked", registry=r)
        self.slack_duplicates = Counter("chatops_slack_duplicates_total",
                                        "Slack deliveries recognised as already handled", ["kind"], registry=r)
        self.commands = Counter("chatops_commands_total", "Commands and actions by name and outcome",
                                ["command", "outcome"], registry=r)
        self.ack_latency = Histogram("chatops_ack_latency_seconds",
                                     "Time from receiving a Slack request to acknowledging it",
                                     buckets=ACK_BUCKETS, registry=r)
        self.tasks_started = Counter("chatops_background_tasks_started_total", "Background tasks started",
                                     ["name"], registry=r)
        self.tasks_failed = Counter("chatops_background_tasks_failed_total", "Background tasks that raised",
                                    ["name"], registry=r)
        self.tasks_in_flight = Gauge("chatops_background_tasks_in_flight", "Background tasks queued or running",
                                     registry=r)
        self.outbox_sent = Counter("chatops_outbox_sent_total", "Slack calls delivered from the outbox",
                                   ["kind"], registry=r)
        self.outbox_retries = Counter("chatops_outbox_retries_total", "Slack calls retried",
                                      ["reason"], registry=r)
        self.outbox_dead = Counter("chatops_outbox_dead_total", "Slack calls given up on", registry=r)
        self.deploy_runs = Counter("chatops_deploy_runs_total", "Deploy runs finished, by environment and outcome",
                                   ["environment", "outcome"], registry=r)
        self.deploy_steps = Histogram("chatops_deploy_step_seconds", "Deploy step durations by kind and status",
                                      ["kind", "status"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
                                      registry=r)
        self.deploy_executor_errors = Counter("chatops_deploy_executor_errors_total",
                                              "Unexpected errors of the deploy engine itself", registry=r)

        self.alerts_received = Counter("chatops_alertmanager_notifications_total",
                                       "Alertmanager notifications accepted, by result (new, duplicate)",
                                       ["result"], registry=r)
        self.alerts_rejected = Counter("chatops_alertmanager_rejected_total",
                                       "Alertmanager webhook requests refused, by reason (401s included)",
                                       ["reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
