"""Generated requests (schemathesis, from feed's own OpenAPI) never get a 5xx, whoever asks:
bad input is a 4xx with a Chinese message."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

EXAMPLES = settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@schemathesis.pytest.from_fixture("feed_schema").parametrize()
@EXAMPLES
def test_feed_answers_generated_requests_without_a_server_error(case, signed) -> None:
    for roles in (["resident"], ["publicist"], ["admin", "party_member"]):
        case.call_and_validate(headers=signed(roles), checks=[not_a_server_error])
