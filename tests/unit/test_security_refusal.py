from __future__ import annotations

from app.broker.admin import TLS_RESETS, security_refusal
from app.settings import Settings

SETTINGS = Settings(broker_url="k:9093", security_protocol="SASL_SSL", sasl_username="app",
                    sasl_password="hunter2")


def test_refused_credentials_name_the_settings_and_not_the_password() -> None:
    line = security_refusal(SETTINGS, ['Unable connect to "k:9093": [Error 58] '
                                       'SaslAuthenticationFailed: Authentication failed'])
    assert line is not None
    assert "STREAMREC_SASL_PASSWORD" in line
    assert "'app'" in line
    assert "hunter2" not in line


def test_an_untrusted_certificate_names_the_ca_setting_and_the_reason() -> None:
    line = security_refusal(SETTINGS, [
        'Unable connect to "k:9093": [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify '
        'failed: self-signed certificate in certificate chain (_ssl.c:1006)'])
    assert line is not None
    assert "STREAMREC_SSL_CAFILE" in line
    assert "(self-signed certificate in certificate chain)" in line


def test_a_reset_handshake_is_a_plaintext_port_only_when_it_repeats() -> None:
    said = ['Unable connect to "k:9093":  [ConnectionResetError]']
    assert security_refusal(SETTINGS, said, resets=1) is None
    line = security_refusal(SETTINGS, said, resets=TLS_RESETS)
    assert line is not None
    assert "does not speak TLS" in line


def test_a_broker_not_up_yet_is_worth_waiting_for() -> None:
    assert security_refusal(SETTINGS, ['Unable connect to "k:9093": [Errno 111] Connect '
                                       'call failed']) is None
    assert security_refusal(SETTINGS, []) is None
