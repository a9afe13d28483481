"""What README.md and contrib/skill/SKILL.md promise, run as a user types it, against a real daemon."""

import json

from support.home import homes


def test_serve_to_without_a_seed_is_a_usage_error_not_a_serve_that_answers_everyone() -> None:
    # The docs pair them (`serve --on-message CMD [--seed TEXT --to PEER]`): --to names where the seed goes.
    # Alone it used to be taken silently, and the serve then answered every peer, not the one named.
    with homes("") as (home,):
        home.start()
        result = home.ctl("--json", "serve", "--on-message", "cat", "--to", "somebody", check=False, timeout=10)
        assert result.returncode == 2, result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["type"] == "agentroomctl.Usage"
        assert "--seed" in error["message"]
        assert home.json("status")["services"]["rooms"]["serving"] is False
