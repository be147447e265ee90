"""The security settings: how they are spelled in a file and the environment, and how a bad
one stops the start."""

from __future__ import annotations

import pytest

from cbhub.config import ConfigError, exposure_problem, load_config


def test_security_settings_from_a_file_and_the_environment(tmp_path):
    path = tmp_path / "cbhub.toml"
    path.write_text(
        "[server]\n"
        'trusted_proxies = ["10.0.0.1", "fd00::/8"]\n'
        'tls_cert = "cert.pem"\n'
        'tls_key = "key.pem"\n'
        "[ingest]\n"
        'allow_ips = ["203.0.113.7/24"]\n'
        "rate_per_ip = 5\n"
        "[ingest.verify]\n"
        'scheme = "hmac-sha256"\n'
        'secret = "from-the-file"\n'
        'header = "X-Hub-Signature-256"\n'
        'prefix = "sha256="\n'
    )
    config = load_config(path, env={})
    assert config.server.trusted_proxies == ("10.0.0.1/32", "fd00::/8")
    assert config.ingest.allow_ips == ("203.0.113.0/24",)  # canonical form
    assert (config.ingest.rate_per_ip, config.ingest.burst) == (5.0, 10.0)  # burst: twice the rate
    spec = config.ingest.verify.spec()
    assert spec is not None and (spec.scheme, spec.header, spec.encoding, spec.prefix) == (
        "hmac-sha256",
        "X-Hub-Signature-256",
        "hex",
        "sha256=",
    )
    assert "from-the-file" not in repr(config)

    env = {"CBHUB_INGEST_VERIFY_SECRET": "from-the-env", "CBHUB_INGEST_RATE_BURST": "3", "CBHUB_INGEST_ALLOW_IPS": ""}
    config = load_config(path, env=env)
    assert config.ingest.verify.spec().secret == "from-the-env"
    assert config.ingest.burst == 3 and config.ingest.allow_ips == ()


def test_no_verify_scheme_means_no_default_check():
    assert load_config(env={}).ingest.verify.spec() is None
    assert load_config(env={"CBHUB_INGEST_RATE_PER_IP": "0.2"}).ingest.burst == 1  # at least one request


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CBHUB_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, proxy.internal"}, "server.trusted_proxies"),
        ({"CBHUB_INGEST_ALLOW_IPS": "300.1.2.3"}, "ingest.allow_ips: ('300.1.2.3',)"),
        ({"CBHUB_INGEST_RATE_PER_IP": "-1"}, "ingest.rate_per_ip: -1.0"),
        ({"CBHUB_INGEST_RATE_BURST": "lots"}, "ingest.rate_burst: 'lots'"),
        ({"CBHUB_INGEST_VERIFY_TOLERANCE": "0"}, "ingest.verify_tolerance: 0"),
        ({"CBHUB_SERVER_TLS_KEY": "key.pem"}, "server.tls_cert and server.tls_key"),
        ({"CBHUB_INGEST_VERIFY_SCHEME": "hmac-sha256", "CBHUB_INGEST_VERIFY_SECRET": "x"}, "ingest.verify.header"),
        # A secret with no scheme would look like protection and be none.
        ({"CBHUB_INGEST_VERIFY_SECRET": "whsec_abc"}, "ingest.verify.scheme: required when ingest.verify.secret"),
    ],
)
def test_a_bad_security_setting_names_the_key(env, message):
    with pytest.raises(ConfigError) as refused:
        load_config(env=env)
    assert message in str(refused.value)
    assert "whsec_abc" not in str(refused.value)


@pytest.mark.parametrize(
    ("host", "env", "refused"),
    [
        ("127.0.0.1", {}, False),
        ("::1", {}, False),
        ("localhost", {}, False),
        ("127.0.0.2", {}, False),
        ("0.0.0.0", {}, True),
        ("::", {}, True),
        ("hooks.example.com", {}, True),
        ("0.0.0.0", {"CBHUB_AUTH_ALLOW_ANONYMOUS": "true"}, False),
        ("0.0.0.0", {"CBHUB_API_KEYS": "ci:0123456789abcdef0"}, False),
    ],
)
def test_an_open_api_is_refused_on_a_reachable_address(host, env, refused):
    config = load_config(env={"CBHUB_SERVER_HOST": host, **env})
    assert (exposure_problem(config) is not None) == refused
