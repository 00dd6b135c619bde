"""Which startup parameters reach the upstream."""
from hoopd.proxy.params import split_options, upstream_params


def test_split_options_follows_postgres_escaping() -> None:
    assert split_options(r"-c search_path=a\ b   -c x=1") == ["-c", "search_path=a b", "-c", "x=1"]


def test_privileged_parameters_never_forwarded() -> None:
    params, dropped = upstream_params({
        "user": "u", "database": "d", "application_name": "psql", "extra_float_digits": "3",
        "role": "postgres", "session_authorization": "postgres",
        "options": r"-c search_path=a\ b -crole=x --session-authorization=y",
    }, read_only=False)
    assert params == {"application_name": "psql", "extra_float_digits": "3",
                      "options": r"-c search_path=a\ b -c standard_conforming_strings=on"}
    assert set(dropped) == {"role", "session_authorization", "options:role", "options:session_authorization"}


def test_read_only_sessions_cannot_turn_read_only_off() -> None:
    params, dropped = upstream_params({"user": "u", "default_transaction_read_only": "off",
                                       "options": "-c default_transaction_read_only=off"}, read_only=True)
    assert params == {"options": "-c default_transaction_read_only=on -c standard_conforming_strings=on"}
    assert "default_transaction_read_only" in dropped


def test_below_admin_standard_conforming_strings_stays_on() -> None:
    client = {"user": "u", "standard_conforming_strings": "off", "options": "-c standard_conforming_strings=off"}
    params, dropped = upstream_params(client, read_only=False)
    assert params == {"options": "-c standard_conforming_strings=on"}
    assert {"standard_conforming_strings", "options:standard_conforming_strings"} <= set(dropped)
    params, dropped = upstream_params(client, read_only=False, admin=True)
    assert params == {"standard_conforming_strings": "off", "options": "-c standard_conforming_strings=off"}
