"""The bean service's admin: accounts are opened and credited through the services, never typed over."""

from django.contrib.auth.models import Permission, User

from beans.models import Account, LedgerEntry
from beans.services import account_create
from tests.admin import AdminTestCase, admin_url


class AccountAdminTests(AdminTestCase):
    def _credit(self, ids: list[int], beans: object) -> list[str]:
        response = self.client.post(
            admin_url(Account, "changelist"),
            {"action": "credit_accounts", "_selected_action": ids, "beans": beans, "index": 0},
            follow=True,
        )
        return [str(message) for message in response.context["messages"]]

    def test_add_form_asks_for_owner_and_opening_balance(self) -> None:
        response = self.client.get(admin_url(Account, "add"))
        self.assertContains(response, 'name="owner"')
        self.assertContains(response, 'name="opening_balance"')
        self.assertNotContains(response, 'name="balance"')

    def test_changelist_offers_the_credit_action_with_an_amount(self) -> None:
        response = self.client.get(admin_url(Account, "changelist"))
        self.assertContains(response, 'value="credit_accounts"')
        self.assertContains(response, 'name="beans"')
        self.assertNotContains(response, 'value="delete_selected"')

    def test_adding_an_account_opens_it_through_the_service(self) -> None:
        response = self.client.post(admin_url(Account, "add"), {"owner": "bob", "opening_balance": 40})

        self.assertRedirects(response, admin_url(Account, "changelist"))
        account = Account.objects.get(owner="bob")
        self.assertEqual(account.balance, 40)
        entry = LedgerEntry.objects.get(account=account)
        self.assertEqual((entry.kind, entry.beans, entry.balance_after), (LedgerEntry.Kind.OPENING, 40, 40))

    def test_negative_opening_balance_is_refused_by_the_form(self) -> None:
        response = self.client.post(admin_url(Account, "add"), {"owner": "bob", "opening_balance": -1})
        self.assertEqual(response.status_code, 200)
        self.assertFalse(Account.objects.filter(owner="bob").exists())

    def test_credit_action_credits_through_a_ledger_entry(self) -> None:
        other = account_create(owner="bob", balance=0)

        feedback = self._credit([self.account.pk, other.pk], 25)

        self.assertEqual(feedback, ["Credited 25 beans to 2 account(s)."])
        self.account.refresh_from_db()
        other.refresh_from_db()
        self.assertEqual((self.account.balance, other.balance), (125, 25))
        credits = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CREDIT).order_by("account_id")
        self.assertEqual(
            [(e.account_id, e.beans, e.balance_after) for e in credits],
            [(self.account.pk, 25, 125), (other.pk, 25, 25)],
        )
        self.assertEqual(credits[0].note, "admin credit by admin")

    def test_credit_action_without_beans_credits_nothing(self) -> None:
        for beans in ("", "0", "-5", "abc"):
            with self.subTest(beans=beans):
                (feedback,) = self._credit([self.account.pk], beans)
                self.assertTrue(feedback.startswith("No account credited: beans:"), feedback)
        self.account.refresh_from_db()
        self.assertEqual(self.account.balance, 100)
        self.assertFalse(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CREDIT).exists())

    def test_credit_action_needs_the_change_permission(self) -> None:
        viewer = User.objects.create_user("viewer", password=None, is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_account"))
        self.client.force_login(viewer)

        self._credit([self.account.pk], 25)

        self.account.refresh_from_db()
        self.assertEqual(self.account.balance, 100)
