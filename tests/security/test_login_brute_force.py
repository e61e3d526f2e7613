"""Guessing a staff member's password from one address slows that address down (429 with
``Retry-After`` and a Chinese message) without locking the account: its owner, from another
address, signs in as usual, and the account stays active.

Against intake's real web process over real TCP: the attacker and the owner connect from two
different loopback addresses (127.0.0.66 and 127.0.0.7), so intake sees two clients exactly as it
would on the internet, with no proxy header to trust. Failures count per username and address
(intake/accounts.py): from the ``LOGIN_MAX_FAILURES``-th on, the address waits, first
``LOGIN_DELAY_SECONDS``, then twice as long with each further failure.
"""

from __future__ import annotations

import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.e2e.harness import PASSWORD, Township

# The whole system runs for these (tests/security/conftest.py): a minute to start on two cores.
pytestmark = pytest.mark.slow

USERNAME = "sec-bf-leader"
# intake's default LOGIN_MAX_FAILURES is 5: four wrong passwords are answered plainly, the fifth
# makes the address wait.
FREE_FAILURES = 4
FIRST_WAIT = 30  # intake's default LOGIN_DELAY_SECONDS


class FromAddress(HTTPAdapter):
    """Connects from one local source address, as a client at that address would."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def client_at(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", FromAddress(address))
    return session


@pytest.fixture(scope="module")
def account(township: Township) -> str:
    """A grid leader's account; the password guesser knows the username."""
    body = {
        "username": USERNAME,
        "name": "韩志明",
        "roles": ["grid_leader"],
        "village_id": township.village_id,
        "password": PASSWORD,
    }
    return township.admin.post("/api/v1/accounts", body, expect=201)["id"]


def login(township: Township, client: requests.Session, password: str) -> requests.Response:
    return client.post(
        township.harness.url("intake") + "/api/v1/auth/login",
        json={"username": USERNAME, "password": password},
        timeout=30,
    )


def test_a_password_guesser_is_slowed_while_the_real_user_still_signs_in(township, account):
    attacker, owner = client_at("127.0.0.66"), client_at("127.0.0.7")

    for guess in range(FREE_FAILURES):
        wrong = login(township, attacker, f"guess-{guess}-365")
        assert wrong.status_code == 401, wrong.text
        assert wrong.json()["error"]["code"] == "wrong_credentials"
    slowed = login(township, attacker, "guess-again-365")

    assert slowed.status_code == 429, slowed.text
    error = slowed.json()["error"]
    assert error["code"] == "login_throttled"
    assert "登录失败次数过多" in error["message"] and "北京时间" in error["message"]
    assert FIRST_WAIT <= int(slowed.headers["Retry-After"]) <= FIRST_WAIT + 60
    # While it waits, even the right password from the guessing address is not looked at.
    assert login(township, attacker, PASSWORD).status_code == 429

    signed_in = login(township, owner, PASSWORD)
    assert signed_in.status_code == 200, signed_in.text
    token = signed_in.json()["access_token"]
    me = requests.get(
        township.harness.url("intake") + "/api/v1/me",
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    )
    assert me.status_code == 200 and me.json()["id"] == account
    assert township.admin.get(f"/api/v1/accounts/{account}")["active"] is True
    # The owner's sign-in clears only the owner's own count: the guesser still waits.
    assert login(township, attacker, "guess-more-365").status_code == 429


def test_guessing_from_an_address_does_not_slow_any_other_address(township, account):
    """Twenty-five guesses from another address: the free ones, then refusals; a third address
    still signs in at the first try."""
    attacker = client_at("127.0.0.67")

    answers = [login(township, attacker, f"guess-{n}-x").status_code for n in range(25)]

    assert answers == [401] * FREE_FAILURES + [429] * (25 - FREE_FAILURES)
    assert login(township, client_at("127.0.0.8"), PASSWORD).status_code == 200
    assert township.admin.get(f"/api/v1/accounts/{account}")["active"] is True
