"""Prometheus metrics, in one container with the registry passed in (a fresh one per test)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric the service exports; names follow Prometheus' naming rules."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # Memory, CPU and open files of this process (process_*), as the default registry has.
        ProcessCollector(registry=registry)
        self.commands = Counter(
            "print_commands_received_total",
            "Commands received, by message type and outcome.",
            ["type", "outcome"],
            registry=registry,
        )
        self.events = Counter(
            "print_events_published_total",
            "Job events confirmed by the AMQP broker, by status.",
            ["status"],
            registry=registry,
        )
        self.rejections = Counter(
            "print_rejections_total",
            "Rejections confirmed by the AMQP broker, by reason.",
            ["reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "print_command_to_event_seconds",
            "Time from a command's arrival to the broker's confirm of the event it caused.",
            ["status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.jobs = Gauge(
            "print_jobs", "Jobs known to this instance, by state.", ["state"], registry=registry
        )
        self.broker_up = Gauge(
            "print_broker_connected",
            "1 while the connection to the broker is up.",
            ["broker"],
            registry=registry,
        )
        # Present (at 0) before the first connection: a broker never reached is alerted on too.
        for broker in ("mqtt", "amqp"):
            self.broker_up.labels(broker)
        self.outbox_depth = Gauge(
            "print_outbox_depth",
            "Messages waiting for the AMQP broker's confirm.",
            registry=registry,
        )
        self.mqtt_backlog = Gauge(
            "print_mqtt_received_backlog",
            "Commands the MQTT broker has sent that wait in the client to be handled.",
            registry=registry,
        )
        self.mqtt_pauses = Counter(
            "print_mqtt_receive_pauses_total",
            "Times the service stopped reading commands because it held MQTT_RECEIVE_MAXIMUM.",
            registry=registry,
        )
        self.outbox_oldest_age = Gauge(
            "print_outbox_oldest_unsent_age_seconds",
            "Age of the oldest message waiting for the AMQP broker's confirm (0 when none).",
            registry=registry,
        )
        self.jobs_purged = Counter(
            "print_jobs_purged_total",
            "Final jobs forgotten (with their history and documents) after JOB_RETENTION.",
            registry=registry,
        )
        self.commits = Counter(
            "print_store_commits_total",
            "Store commits (each may carry many changes: group commit).",
            registry=registry,
        )
        self.redeliveries = Counter(
            "print_outbox_redeliveries_total",
            "Messages published again after a failed attempt, with the same message id.",
            registry=registry,
        )
        self.publish_failures = Counter(
            "print_publish_failures_total",
            "Publishes that failed and will be retried.",
            registry=registry,
        )
        self.dead_letters = Counter(
            "print_dead_letters_total",
            "Messages parked as dead letters, by source (command or event).",
            ["source"],
            registry=registry,
        )
        # Present at 0 from the start: `increase()` does not see the first dead letter of a
        # series that appears with it.
        for source in ("command", "event"):
            self.dead_letters.labels(source)
        self.store_refusals = Counter(
            "print_store_refusals_total",
            "Transactions the store refused for their data (answered as internal_error).",
            registry=registry,
        )
        self.trace_context_invalid = Counter(
            "print_trace_context_invalid_total",
            "Commands whose traceparent was malformed: ignored, a new trace started "
            "(counted with tracing on).",
            registry=registry,
        )
        self.last_wills = Counter(
            "print_last_wills_received_total",
            "Last wills of other MQTT clients seen on the last-will topic.",
            registry=registry,
        )
        self.reconnects = Counter(
            "print_broker_reconnect_attempts_total",
            "Attempts to (re)connect to a broker.",
            ["broker"],
            registry=registry,
        )
        self.key_reloads = Counter(
            "print_api_key_reloads_total",
            "Changes of API_KEYS_FILE seen, by outcome (applied, or refused: the old keys stay).",
            ["outcome"],
            registry=registry,
        )
        self.lease_losses = Counter(
            "print_lease_losses_total",
            "Times this replica found its lease gone and gave up the lanes it held.",
            registry=registry,
        )
        self.ready = Gauge(
            "print_ready",
            "1 while the /readyz check passes, by check (mqtt, amqp, store, outbox, accepting).",
            ["check"],
            registry=registry,
        )
        # The children that every job changes, each looked up once: `labels()` validates
        # the values and takes a lock on every call (1.5 us, ten times a job).
        self.jobs_in = functools.cache(self.jobs.labels)
        self.events_of = functools.cache(self.events.labels)
        self.latency_of = functools.cache(self.latency.labels)
        self.rejections_of = functools.cache(self.rejections.labels)
        self.commands_of = functools.cache(self.commands.labels)

    def watch_readiness(self, checks: Callable[[], Mapping[str, bool]]) -> None:
        """Export each check of `checks` (the /readyz checks) as `print_ready{check}`, read
        at every scrape."""

        def passing(name: str) -> Callable[[], float]:
            return lambda: float(checks()[name])

        for name in checks():
            self.ready.labels(name).set_function(passing(name))
