"""A group of three in three browsers: create, talk, rename, remove and add a member."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import expect

from .client import WAIT_MS, WebUser


def test_group_of_three(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    carol = web_user("carol")

    alice.create_group("weekend trip", [bob.name, carol.name])
    expect(alice.page.locator("#message-list .system")).to_have_text(
        [f"{alice.name} created the group “weekend trip”"], timeout=WAIT_MS
    )
    alice.send("who brings the tent?")
    alice.expect_tick("who brings the tent?", "delivered")

    for member in (bob, carol):
        member.open_conversation("weekend trip")
        item = member.expect_message("who brings the tent?")
        expect(item.locator(".author")).to_have_text(alice.name, timeout=WAIT_MS)
    alice.expect_tick("who brings the tent?", "read")  # read only once both have seen it

    bob.send("I do")
    carol.send("I bring food")
    expected = ["who brings the tent?", "I do", "I bring food"]
    for member in (alice, bob, carol):
        member.expect_bodies(expected)

    # Rename: everyone's header and list follow.
    alice.page.click("#info-button")
    expect(alice.page.locator("#member-list .member")).to_have_count(3, timeout=WAIT_MS)
    alice.page.fill("#rename-title", "camping")
    alice.page.click("#rename-form button[type=submit]")
    for member in (alice, bob, carol):
        expect(member.page.locator("#chat-title")).to_have_text("camping", timeout=WAIT_MS)
        expect(member.page.locator("#message-list .system").last).to_have_text(
            f"{alice.name} renamed the group to “camping”", timeout=WAIT_MS
        )

    # bob, a plain member, cannot rename or remove; alice, the owner, removes carol.
    bob.page.click("#info-button")
    expect(bob.page.locator("#rename-form")).to_be_hidden(timeout=WAIT_MS)
    expect(bob.page.locator("#member-list .remove-member")).to_have_count(0, timeout=WAIT_MS)
    alice.page.locator(f"#member-list .member[data-user='{carol.name}'] .remove-member").click()
    expect(alice.page.locator("#member-list .member")).to_have_count(2, timeout=WAIT_MS)
    expect(carol.conversation("camping")).to_have_count(0, timeout=WAIT_MS)
    expect(carol.page.locator("#no-chat")).to_be_visible(timeout=WAIT_MS)
    expect(bob.page.locator("#message-list .system").last).to_have_text(
        f"{alice.name} removed {carol.name}", timeout=WAIT_MS
    )

    alice.send("just the two of us")
    bob.expect_message("just the two of us")

    # ... and adds her back: the group reappears in carol's list with its whole history.
    alice.page.fill("#add-member-user", carol.name)
    alice.page.click("#add-member-form button[type=submit]")
    expect(alice.page.locator("#member-list .member")).to_have_count(3, timeout=WAIT_MS)
    carol.open_conversation("camping")
    carol.expect_bodies([*expected, "just the two of us"])
    expect(carol.page.locator("#chat-subtitle")).to_contain_text("3 members", timeout=WAIT_MS)

    # alice makes bob an admin: he may now rename the group.
    alice.page.locator(f"#member-list .member[data-user='{bob.name}'] .set-role").click()
    expect(bob.page.locator("#rename-form")).to_be_visible(timeout=WAIT_MS)
    bob.page.fill("#rename-title", "camping 2026")
    bob.page.click("#rename-form button[type=submit]")
    expect(carol.page.locator("#chat-title")).to_have_text("camping 2026", timeout=WAIT_MS)

    # carol leaves: the group leaves her list, the others see her go.
    carol.page.click("#info-button")
    carol.page.click("#leave-button")
    expect(carol.conversation("camping 2026")).to_have_count(0, timeout=WAIT_MS)
    expect(alice.page.locator("#message-list .system").last).to_have_text(
        f"{carol.name} left", timeout=WAIT_MS
    )
    expect(alice.page.locator("#member-list .member")).to_have_count(2, timeout=WAIT_MS)


def test_group_with_an_unknown_member_is_refused(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    alice.page.click("#new-group-button")
    alice.page.fill("#new-group-title", "ghosts")
    alice.page.fill("#new-group-members", "nobody-at-all")
    alice.page.click("#new-group-form button[type=submit]")
    expect(alice.page.locator("#new-group-form .error")).to_contain_text(
        "nobody-at-all", timeout=WAIT_MS
    )
    expect(alice.conversation("ghosts")).to_have_count(0, timeout=WAIT_MS)
