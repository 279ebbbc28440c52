"""CORS config: origins are checked and compared in lower case. The preflights, the exposed credit
headers and a real headless Chromium against the real gateway are in
tests/integration/test_cors_gateway.py."""

from __future__ import annotations

import pytest

from gateway.config.load import ConfigError, parse_config
from tests.support.stack import base_config


@pytest.mark.parametrize("cors, problem", [
    ({"origins": ["https://app.example.com/"]}, "services.elvis.cors.origins: item 0: not an origin"),
    ({"origins": ["https://app.example.com/path"]}, "services.elvis.cors.origins: item 0: not an origin"),
    ({"origins": ["null"]}, "services.elvis.cors.origins: item 0: not an origin"),
    ({"origins": []}, "services.elvis.cors.origins: must have at least 1 item(s)"),
    ({}, "services.elvis.cors.origins: required"),
    ({"origins": ["*"], "credentials": True}, "services.elvis.cors.credentials: unknown key"),
    ({"origins": ["*"], "allow_headers": ["bad header"]}, "services.elvis.cors.allow_headers: item 0"),
])
def test_cors_config_problems(signing_key, cors, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(base_config(None, None, signing_key, cors=cors), {})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_origins_are_compared_in_lower_case(signing_key):
    service = parse_config(base_config(None, None, signing_key, cors={"origins": ["https://App.Example.com:8443"]}),
                           {}).services["elvis"]
    assert service.cors.origins == ("https://app.example.com:8443",)
