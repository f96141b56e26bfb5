"""MQTT broker credentials and TLS: the password from its configured source, the client TLS context.

Module functions: `linesight check-config` and the start-up check call the very same code the sink runs in
`MqttSink.start()`, so a config they pass cannot be refused there. Secrets never appear in a message: errors
name the setting, the variable or the file, never the value.
"""

from __future__ import annotations

import os
import ssl

from linesight.config.outputs import MqttConfig, MqttTlsConfig
from linesight.errors import ConfigError

_FIELD = "outputs.mqtt"


def read_password(cfg: MqttConfig) -> str | None:
    """The broker password from `password_env` / `password_file` (None: none configured).

    Raises ConfigError naming the setting; the value itself never appears in a message."""
    if cfg.password_env:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise ConfigError(
                f"environment variable {cfg.password_env} is not set; export it in the daemon's environment "
                "(e.g. systemd EnvironmentFile=)", field=f"{_FIELD}.password_env")
        return value
    if cfg.password_file:
        field = f"{_FIELD}.password_file"
        try:
            with open(cfg.password_file, encoding="utf-8") as fh:
                value = fh.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read {cfg.password_file} ({why}); check the path and that the daemon "
                              "user may read it", field=field) from None
        if not value:
            raise ConfigError(f"{cfg.password_file} is empty; its first line must be the broker password",
                              field=field)
        return value
    return None


def tls_file_problems(tls: MqttTlsConfig) -> list[ConfigError]:
    """One error per configured TLS file that is missing or unreadable (all of them, for check-config)."""
    problems = []
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is None:
            continue
        field = f"{_FIELD}.tls.{name}"
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            problems.append(ConfigError(f"file not found: {path}; fix the path", field=field))
        except IsADirectoryError:
            problems.append(ConfigError(f"{path} is a folder; name the PEM file", field=field))
        except OSError as exc:
            problems.append(ConfigError(f"cannot read {path} ({exc.strerror}); the daemon user needs read "
                                        "access", field=field))
    return problems


def _no_key_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal (a daemon would hang or fail obscurely).
    raise ConfigError("the private key is encrypted; linesight needs an unencrypted key (openssl pkey -in "
                      "key.pem -out plain.pem), protected by file permissions", field=f"{_FIELD}.tls.key_file")


def tls_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """The client TLS context, built exactly like paho's `tls_set` (TLS client protocol, broker certificate
    and host name verified) but with errors that name the file at fault."""
    problems = tls_file_problems(tls)
    if problems:
        raise problems[0]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None,
                                    password=_no_key_passphrase)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"cannot load the client certificate {tls.cert_file} with key {tls.key_file} "
                              f"({exc}); they must be PEM files and belong together",
                              field=f"{_FIELD}.tls.cert_file") from None
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(str(tls.ca_file))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load CA certificates from {tls.ca_file} ({exc}); it must hold PEM "
                              "certificates", field=f"{_FIELD}.tls.ca_file") from None
    else:
        context.load_default_certs()
    return context
