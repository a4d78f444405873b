"""README.md's credential claim ('Credentials never reach saved configs, command-line records or W&B'), each test quoting
the line it checks: credentials are redacted and scrubbed, settings that merely look like them are kept."""
from __future__ import annotations

import pytest


# ---------------------------------------------------------------------------------------------- credentials
def test_redaction_keeps_token_count_settings_and_drops_credentials():
    """'Credentials never reach saved configs, command-line records or W&B' -- and only credentials: the
    run's `config_resolved.yaml` / `overrides.yaml` must still record settings such as `phase.gen_tokens`."""
    from agentforge.tracking.redaction import redact, redact_args

    cfg = {"phase": {"gen_tokens": 24, "latency_tokens": 512, "max_new_tokens": 64, "tokenizer": "byte",
                     "baking": {"usage_tokens": 10, "sample_tokens": 8}},
           "logger": {"api_key": "sk-1", "WANDB_API_KEY": "sk-2", "hf_token": "hf-3", "password": "p",
                      "client_secret": "s", "token": "t",
                      "aws_access_key": "a", "private_key": "k"}}
    out = redact(cfg)
    assert out["phase"] == cfg["phase"]
    assert all(v == "<redacted>" for v in out["logger"].values())
    args = ["phase.gen_tokens=4", "phase.baking.sample_tokens=2", "+logger.api_key=sk-1", "+hf_token=hf-3",
            "+logger.auth_token=x"]
    assert redact_args(args) == ["phase.gen_tokens=4", "phase.baking.sample_tokens=2", "+logger.api_key=<redacted>",
                                 "+hf_token=<redacted>", "+logger.auth_token=<redacted>"]


CREDENTIAL_KEYS = ["WANDB_API_KEY", "OPENAI_API_KEY", "api-key", "apikey", "apiKey", "x-api-key", "HF_TOKEN", "hf_token",
                   "GITHUB_TOKEN", "access_token", "accessToken", "authTokenValue", "refresh_token", "client_secret",
                   "clientSecret", "password", "PASSWD", "passphrase", "db_password", "credentials", "bearer",
                   "bearer_token", "Authorization", "auth", "oauth", "aws_access_key", "aws_secret_access_key",
                   "private_key", "privateKey", "ssh_key", "signing_key", "wandb_key", "cookie"]
SETTING_KEYS = ["gen_tokens", "max_new_tokens", "tokens", "num_tokens", "context_tokens", "latency_tokens",
                "inference_tokens", "usage_tokens", "sample_tokens", "min_throughput_tokens_per_sec", "tokenizer",
                "special_tokens", "ltm_key_dim", "pass_k", "pass_k_samples", "min_pass_at_1", "author", "monkey",
                "keyboard", "passes", "key_dim"]


@pytest.mark.parametrize("key", CREDENTIAL_KEYS)
def test_credential_keys_are_redacted(key):
    """Every common spelling of a credential's key (environment-style, snake, kebab, camelCase) is redacted."""
    from agentforge.tracking.redaction import redact, redact_args

    assert redact({key: "s3cr3t"}) == {key: "<redacted>"}
    assert redact_args([f"+logger.{key}=s3cr3t"]) == [f"+logger.{key}=<redacted>"]


def test_scrub_removes_the_override_credentials_from_any_text():
    """redaction.scrub: the values of credential overrides vanish from a record in any form (Hydra's multirun.yaml
    holds them as a list, as `override_dirname` and as the composed value); other values stay."""
    from agentforge.tracking.redaction import credential_values, scrub

    args = ["optimizer.lr=-0.1,-0.2", "+logger.api_key=sk-1", "+hf_token=sk-12", "phase.gen_tokens=4", "+x.secret="]
    assert credential_values(args) == ["sk-12", "sk-1"]                  # longest first: no partial replacement
    text = "- +logger.api_key=sk-1\noverride_dirname: +hf_token=sk-12,+logger.api_key=sk-1,optimizer.lr=-0.1,-0.2\n"
    assert scrub(text, args) == ("- +logger.api_key=<redacted>\noverride_dirname: +hf_token=<redacted>,"
                                 "+logger.api_key=<redacted>,optimizer.lr=-0.1,-0.2\n")


@pytest.mark.parametrize("key", SETTING_KEYS)
def test_settings_that_merely_contain_token_key_or_pass_are_kept(key):
    from agentforge.tracking.redaction import redact

    assert redact({key: 3}) == {key: 3}
