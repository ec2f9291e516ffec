"""``reranker profiles update|delete``: the users' click profiles behind
``rerank.personalize``."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from reranker.cli.common import RerankerGroup, es_client
from reranker.es.profiles import (
    DEFAULT_HALF_LIFE_DAYS,
    DEFAULT_PROFILES_INDEX,
    DEFAULT_RETENTION_DAYS,
    delete_where,
    owner_subject_filter,
    update_profiles,
)


@click.group(cls=RerankerGroup)
def profiles() -> None:
    """Personalisation profiles: one per user of each proxy client on each index, the
    decayed mean embedding of the documents the user clicked.

    The proxy (`reranker serve --ubi`) stamps every accepted click with the user and index of
    its search; `profiles update` folds the clicks received since its last run into the
    profiles (run it on a schedule: each run reads only what is new), and a search with
    `"rerank": {"personalize": true}` and `ext.ubi.user_id` reads its user's profile.
    """


@profiles.command("update")
@click.option("--events-index", default="ubi_events", show_default=True)
@click.option("--profiles-index", default=DEFAULT_PROFILES_INDEX, show_default=True)
@click.option(
    "--half-life-days",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_HALF_LIFE_DAYS,
    show_default=True,
    help="A click's weight halves every this many days.",
)
@click.option(
    "--retention-days",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_RETENTION_DAYS,
    show_default=True,
    help="Clicks older than this are ignored; profiles not updated for this long are deleted.",
)
@click.pass_context
def update_cmd(
    ctx: click.Context,
    events_index: str,
    profiles_index: str,
    half_life_days: float,
    retention_days: float,
) -> None:
    """Fold the click events received since the last run into their users' profiles, and
    delete the profiles past the retention. Prints what it did as JSON."""
    report = update_profiles(
        es_client(ctx),
        events_index=events_index,
        profiles_index=profiles_index,
        half_life_days=half_life_days,
        retention_days=retention_days,
    )
    click.echo(json.dumps(asdict(report), indent=2))


@profiles.command("delete")
@click.option("--user", required=True, help="The user id (ext.ubi.user_id, else client_id).")
@click.option(
    "--owner",
    default="",
    help="The proxy client (its key digest, as `reranker.owner` in the events); empty on a "
    "proxy without API keys.",
)
@click.option("--profiles-index", default=DEFAULT_PROFILES_INDEX, show_default=True)
@click.pass_context
def delete_cmd(ctx: click.Context, user: str, owner: str, profiles_index: str) -> None:
    """Delete one user's profiles (every index). Clients delete their own users' profiles
    through the proxy: DELETE /_reranker/profiles/{user}."""
    deleted = delete_where(es_client(ctx), profiles_index, owner_subject_filter(owner, user))
    click.echo(json.dumps({"deleted": deleted}))
