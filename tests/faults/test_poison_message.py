"""A poison message: an event dispatch cannot apply ends in its DLQ after exactly the retry
ladder, the consumer keeps applying the good events around it, the worker's metric and the
DeadLetters alert show it, and ``replay-dlq`` applies it once after the cause is fixed.

The poison is a real kind: a resident's 补充说明 (``issue.details_added``, as intake publishes
it) that overtook its report, so dispatch does not know the item yet (``未找到该事项``) and no
retry changes that. The fix an operator makes is the missing report reaching dispatch; then the
dead letter is replayed. Residents' real reports through intake flow before, around and after.

dispatch runs a short ladder here (three retries of 100, 200 and 400 ms, then the DLQ). The
alert rule is checked by Prometheus's own ``promtool test rules`` on a test file made from the
rule in deploy/prometheus/alerts.yml and the values scraped from dispatch's worker.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pika
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shared.events import make_envelope
from shared.testing import wait_for
from tests.e2e.harness import ROOT, Api, Harness, Township
from tests.faults.tally import MAX_ATTEMPTS, RETRY_DELAYS_MS, SHORT_LADDER

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DLQ = "dispatch.events.dlq"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness(start_system) -> Iterator[Harness]:
    """The whole system as real processes, dispatch with the short retry ladder."""
    with start_system("faults-poison", env={"dispatch": SHORT_LADDER}) as system:
        yield system


def series(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus scrape; None when the scrape lacks it."""
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


def consumed(text: str, event_type: str, outcome: str) -> float:
    """dispatch's worker: events of that type consumed with that outcome since it started."""
    value = series(
        text, "events_consumed_total", service="dispatch", type=event_type, outcome=outcome
    )
    return value or 0.0


def publish(harness: Harness, envelope: dict) -> None:
    """Publish as a producer does: to the events exchange, routing key = the event's type."""
    connection = pika.BlockingConnection(pika.URLParameters(harness.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            "service365.events",
            envelope["type"],
            json.dumps(envelope).encode(),
            pika.BasicProperties(
                delivery_mode=2,
                content_type="application/json",
                message_id=envelope["id"],
                type=envelope["type"],
                app_id=envelope["producer"],
            ),
            mandatory=True,
        )
    finally:
        connection.close()


def peek_dead_letter(harness: Harness) -> tuple[dict, dict]:
    """The body and headers of the message waiting in dispatch's DLQ, left where it is."""
    connection = pika.BlockingConnection(pika.URLParameters(harness.amqp_url))
    try:
        channel = connection.channel()
        method, properties, body = channel.basic_get(DLQ, auto_ack=False)
        assert method is not None, f"{DLQ} is empty"
        channel.basic_nack(method.delivery_tag, requeue=True)
        return json.loads(body), dict(properties.headers or {})
    finally:
        connection.close()


def report(resident: Api, village_id: str, n: int) -> str:
    """A resident's real report through intake; its id."""
    answer = resident.post(
        "/api/v1/issues",
        {
            "category": "water_power",
            "description": f"第 {n} 号反映：村西头自来水管漏水，路面结冰。",
            "village_id": village_id,
        },
        expect=201,
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    return answer["id"]


def dispatch_issues(harness: Harness, reporter_id: str) -> list[str]:
    rows = harness.rows("dispatch", "SELECT id FROM issues WHERE reporter_id = :r", r=reporter_id)
    return sorted(str(row.id) for row in rows)


def details_steps(harness: Harness, issue_id: str) -> int:
    return harness.scalar(
        "dispatch",
        "SELECT count(*) FROM issue_history WHERE issue_id = :i AND action = 'details'",
        i=issue_id,
    )


# --- the alert rule, checked by promtool ---------------------------------------------------------


def dead_letters_rule() -> dict:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    [rule] = [r for g in groups for r in g["rules"] if r.get("alert") == "DeadLetters"]
    return rule


def render(template: str, labels: dict[str, str], value: float) -> str:
    """The rule's annotation as Prometheus fills it in (it uses only labels and the value)."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
    text = text.replace("{{ $value }}", f"{value:g}")
    assert "{{" not in text, f"a template the test does not fill in: {text}"
    return text


def promtool_test(folder: Path, before: float, after: float) -> str:
    """Run ``promtool test rules`` on alerts.yml with dispatch's scraped DLQ depths as input:
    ``before`` the poison (then ``after`` it, one scrape a minute)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found on PATH: install Debian's prometheus package "
            "(`apt-get install -y --no-install-recommends prometheus`; .ci/run does it)"
        )
    rule = dead_letters_rule()
    labels = {"service": "dispatch", "severity": rule["labels"]["severity"]}
    target = 'job="service365-worker", component="worker", instance="dispatch-worker:9100"'
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'dlq_messages{{service="dispatch", {target}}}',
                        "values": f"{before:g} {after:g}x5",
                    }
                ],
                "alert_rule_test": [
                    {"eval_time": "0m", "alertname": "DeadLetters", "exp_alerts": []},
                    # pending: seen, not yet for the rule's whole `for`
                    {"eval_time": "1m", "alertname": "DeadLetters", "exp_alerts": []},
                    {
                        "eval_time": "3m",
                        "alertname": "DeadLetters",
                        "exp_alerts": [
                            {
                                "exp_labels": labels,
                                "exp_annotations": {
                                    key: render(text, labels, after)
                                    for key, text in rule["annotations"].items()
                                },
                            }
                        ],
                    },
                ],
            },
            {
                # The depth before the poison, for as long: the alert stays silent.
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'dlq_messages{{service="dispatch", {target}}}',
                        "values": f"{before:g}x5",
                    }
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "DeadLetters", "exp_alerts": []}
                ],
            },
        ],
    }
    path = folder / "dead_letters_test.yml"
    path.write_text(yaml.safe_dump(tests, allow_unicode=True, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool test rules failed:\n{output}"
    return output


# --- the test ------------------------------------------------------------------------------------


def test_a_details_event_that_overtook_its_report_is_dead_lettered_and_replayed_once_fixed(
    township: Township, harness: Harness, tmp_path: Path
):
    """Exactly the ladder's tries, then the DLQ; the good reports go on; the metric and the
    alert show it; after the report arrives, replay-dlq applies it once."""
    resident = township.resident(f"faults-poison-{uuid.uuid4().hex[:8]}")
    reporter_id = resident.user["id"]
    village_id = township.village_id
    scrape_before = harness.metrics_text("dispatch", "worker")
    dlq_before = series(scrape_before, "dlq_messages", service="dispatch")
    assert dlq_before == 0, "dispatch's worker reports no DLQ depth before the poison"
    processed_before = consumed(scrape_before, "issue.reported", "processed")

    # Good reports, then the poison, then more good reports: one stream into dispatch.events.
    good = [report(resident, village_id, n) for n in (1, 2, 3)]
    wait_for(
        lambda: harness.scalar("intake", "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0,
        timeout=30,
    )
    late_issue = str(uuid.uuid4())  # intake's report of it has not reached dispatch
    poison = make_envelope(
        "issue.details_added",
        {
            "issue_id": late_issue,
            "reporter_id": reporter_id,
            "text": "补充一下：漏水的位置在村委会东边五十米的井盖旁。",
            "photo_ids": [],
            "by": reporter_id,
            "added_at": datetime.now(UTC),
        },
        producer="intake",
    )
    publish(harness, poison)
    good += [report(resident, village_id, n) for n in (4, 5, 6)]

    # The poison: tried MAX_ATTEMPTS times (MAX_ATTEMPTS - 1 retries), then the DLQ.
    wait_for(lambda: harness.message_count(DLQ) == 1, timeout=30, interval=0.1)
    body, headers = peek_dead_letter(harness)
    assert body["id"] == poison["id"]
    assert headers["x-service365-reason"] == "max_attempts"
    assert headers["x-service365-attempts"] == MAX_ATTEMPTS
    assert headers["x-service365-routing-key"] == "issue.details_added"
    assert "NotFound" in headers["x-service365-error"], headers

    # The consumer kept going: the reports around it are applied, and the ones after it too.
    good += [report(resident, village_id, n) for n in (7, 8)]
    wait_for(lambda: dispatch_issues(harness, reporter_id) == sorted(good), timeout=30)
    assert harness.message_count(DLQ) == 1

    # dispatch's worker counts it: exactly the ladder's retries, one dead letter, and its
    # DLQ depth gauge (refreshed every 15 s) shows it. (Counted just after each ack: waited for.)
    def scraped_dead_letter() -> str | None:
        text = harness.metrics_text("dispatch", "worker")
        counted = (
            series(text, "dlq_messages", service="dispatch") == 1
            and consumed(text, "issue.details_added", "dead_lettered") >= 1
            and consumed(text, "issue.reported", "processed") - processed_before >= len(good)
        )
        return text if counted else None

    scrape = wait_for(scraped_dead_letter, timeout=40, interval=0.5)
    assert consumed(scrape, "issue.details_added", "retried") == MAX_ATTEMPTS - 1
    assert consumed(scrape, "issue.details_added", "dead_lettered") == 1
    assert consumed(scrape, "issue.details_added", "processed") == 0
    assert consumed(scrape, "issue.reported", "processed") - processed_before == len(good)
    assert consumed(scrape, "issue.reported", "retried") == 0

    # The DeadLetters alert fires on that series, and not on the depth before.
    dlq_after = series(scrape, "dlq_messages", service="dispatch")
    output = promtool_test(tmp_path, dlq_before, dlq_after)
    assert "SUCCESS" in output, output

    # The fix: the report the 补充说明 belongs to reaches dispatch (as intake publishes it).
    publish(
        harness,
        make_envelope(
            "issue.reported",
            {
                "issue_id": late_issue,
                "ticket_no": None,
                "reporter_id": reporter_id,
                "category": "water_power",
                "description": "村西头自来水管漏水，路面结冰，老人出门容易摔倒。",
                "village_id": village_id,
                "address": "沙口集村西头",
                "lat": None,
                "lon": None,
                "photo_ids": [],
                "reported_at": datetime.now(UTC),
            },
            producer="intake",
        ),
    )
    wait_for(lambda: late_issue in dispatch_issues(harness, reporter_id), timeout=30)
    assert details_steps(harness, late_issue) == 0
    assert harness.message_count(DLQ) == 1

    replayed = harness.command("dispatch", "replay-dlq")
    assert "已重新投递 1 条" in replayed.stdout, replayed.stdout

    # Applied once, and nothing is left anywhere.
    wait_for(lambda: details_steps(harness, late_issue) == 1, timeout=30)
    wait_for(lambda: harness.queue_state("dispatch.events") == (0, 1), timeout=20)
    assert harness.message_count(DLQ) == 0
    for delay in RETRY_DELAYS_MS:
        assert harness.message_count(f"dispatch.events.retry.{delay}ms") == 0
    [note] = harness.rows(
        "dispatch",
        "SELECT note FROM issue_history WHERE issue_id = :i AND action = 'details'",
        i=late_issue,
    )
    assert note.note == "补充一下：漏水的位置在村委会东边五十米的井盖旁。"

    def scraped_replay() -> str | None:
        text = harness.metrics_text("dispatch", "worker")
        return text if consumed(text, "issue.details_added", "processed") >= 1 else None

    final = wait_for(scraped_replay, timeout=10)
    assert consumed(final, "issue.details_added", "processed") == 1
    assert consumed(final, "issue.details_added", "dead_lettered") == 1
    assert consumed(final, "issue.details_added", "retried") == MAX_ATTEMPTS - 1
    assert dispatch_issues(harness, reporter_id) == sorted([*good, late_issue])
