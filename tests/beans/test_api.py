"""The bean service's HTTP API: an account and its balance.

``TestCase`` discards ``on_commit`` callbacks, so these tests need no broker.
"""

from django.test import TestCase

from beans.services import account_create
from tests.api import client_authenticate


class AccountApiTests(TestCase):
    def setUp(self) -> None:
        client_authenticate(self.client)

    def test_account_detail_shows_the_balance(self) -> None:
        account = account_create(owner="alice", balance=100)

        response = self.client.get(f"/api/accounts/{account.pk}/")

        self.assertEqual(response.status_code, 200)
        body = response.json()
        self.assertEqual((body["id"], body["owner"], body["balance"]), (account.pk, "alice", 100))

    def test_unknown_account_is_not_found(self) -> None:
        response = self.client.get("/api/accounts/999999/")
        self.assertEqual(response.status_code, 404)
        self.assertIsInstance(response.json()["error"], str)
