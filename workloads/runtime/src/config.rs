//! Reading configuration from the environment, with errors that name the variable.
//!
//! Each workload builds its own configuration struct from these helpers. They read through a
//! [`Source`] rather than `std::env` directly so tests can pass a map instead of mutating the
//! process environment (which is `unsafe` in Rust 2024 for good reason: other threads may read it).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use pipeline_contract::env;

/// A configuration problem, naming the variable so the operator's user sees at once what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {variable} is required but not set")]
    Missing { variable: &'static str },
    #[error("environment variable {variable} is invalid: {problem}")]
    Invalid {
        variable: &'static str,
        problem: String,
    },
}

/// Where configuration values come from.
pub trait Source {
    fn get(&self, variable: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, variable: &str) -> Option<String> {
        std::env::var(variable).ok()
    }
}

impl Source for BTreeMap<String, String> {
    fn get(&self, variable: &str) -> Option<String> {
        BTreeMap::get(self, variable).cloned()
    }
}

impl Source for BTreeMap<&str, &str> {
    fn get(&self, variable: &str) -> Option<String> {
        BTreeMap::get(self, variable).map(|value| (*value).to_owned())
    }
}

/// A required, non-empty value.
pub fn required(source: &impl Source, variable: &'static str) -> Result<String, ConfigError> {
    match source.get(variable) {
        Some(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
        _ => Err(ConfigError::Missing { variable }),
    }
}

/// An optional value parsed with `FromStr`, or `default` when unset or empty.
pub fn parsed_or<T>(
    source: &impl Source,
    variable: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match source.get(variable) {
        Some(value) if !value.trim().is_empty() => {
            value
                .trim()
                .parse()
                .map_err(|error: T::Err| ConfigError::Invalid {
                    variable,
                    problem: format!("{value:?}: {error}"),
                })
        }
        _ => Ok(default),
    }
}

/// A required comma-separated list; empty items are an error (they are always a typo).
pub fn list(source: &impl Source, variable: &'static str) -> Result<Vec<String>, ConfigError> {
    let raw = required(source, variable)?;
    let items: Vec<String> = raw.split(',').map(|item| item.trim().to_owned()).collect();
    if items.iter().any(String::is_empty) {
        return Err(ConfigError::Invalid {
            variable,
            problem: format!("{raw:?} has an empty item"),
        });
    }
    Ok(items)
}

/// The RabbitMQ node URLs from `RABBITMQ_URLS`, each an amqp:// or amqps:// URL with a host.
///
/// When `RABBITMQ_USERNAME` is set, its value and `RABBITMQ_PASSWORD`'s are percent-encoded into
/// every URL (which must then carry no credentials of its own): a password may hold `/`, `@`
/// or `:` and still reach RabbitMQ intact, and [`redact_url`] still finds it. Errors never
/// echo a URL's password.
pub fn rabbitmq_urls(source: &impl Source) -> Result<Vec<String>, ConfigError> {
    let urls = list(source, env::RABBITMQ_URLS)?;
    let username = source
        .get(env::RABBITMQ_USERNAME)
        .filter(|user| !user.is_empty());
    // Not trimmed: a password's spaces are part of it.
    let password = source
        .get(env::RABBITMQ_PASSWORD)
        .filter(|password| !password.is_empty());
    if password.is_some() && username.is_none() {
        return Err(ConfigError::Missing {
            variable: env::RABBITMQ_USERNAME,
        });
    }
    let invalid = |problem: String| ConfigError::Invalid {
        variable: env::RABBITMQ_URLS,
        problem,
    };
    urls.iter()
        .map(|raw| {
            let mut url = url::Url::parse(raw)
                .map_err(|error| invalid(format!("{} is not a URL ({error})", redact_url(raw))))?;
            if !matches!(url.scheme(), "amqp" | "amqps") {
                return Err(invalid(format!(
                    "{} is not an amqp:// or amqps:// URL",
                    redact_url(raw)
                )));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(invalid(format!("{} has no host", redact_url(raw))));
            }
            if let Some(username) = &username {
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(invalid(format!(
                        "{} carries credentials while {} is set; give them once",
                        redact_url(raw),
                        env::RABBITMQ_USERNAME
                    )));
                }
                // Encoded here, '%' included (the URL standard leaves '%' in userinfo as it is,
                // and lapin decodes it), exactly as lapin decodes: every byte but letters and
                // digits. Neither setter fails on a URL with a host.
                let encode = |value: &str| utf8_percent_encode(value, NON_ALPHANUMERIC).to_string();
                let set = url
                    .set_username(&encode(username))
                    .and_then(|()| url.set_password(password.as_deref().map(encode).as_deref()));
                if set.is_err() {
                    return Err(invalid(format!(
                        "{} cannot take credentials",
                        redact_url(raw)
                    )));
                }
            }
            Ok(url.to_string())
        })
        .collect()
}

/// `host:port` from a variable, checked for shape (the port must be a number).
pub fn host_port(source: &impl Source, variable: &'static str) -> Result<String, ConfigError> {
    let value = required(source, variable)?;
    check_host_port(&value).map_err(|problem| ConfigError::Invalid { variable, problem })?;
    Ok(value)
}

fn check_host_port(value: &str) -> Result<(), String> {
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("{value:?} is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{value:?} has an invalid port {port:?}"))?;
    Ok(())
}

/// The admin port (`ADMIN_PORT`, default [`pipeline_contract::ports::ADMIN`]).
pub fn admin_port(source: &impl Source) -> Result<u16, ConfigError> {
    parsed_or(source, env::ADMIN_PORT, pipeline_contract::ports::ADMIN)
}

/// A URL with any password replaced, safe to log. A string that does not parse as a URL is
/// shown as its scheme only: where its password would end cannot be known.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Setting a password fails only on URLs that cannot have one, and this one has.
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://<not a valid URL>"),
            None => "<not a valid URL>".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pairs: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn missing_variable_is_named() {
        let error = required(&source(&[]), env::JWT_SECRET).unwrap_err();
        assert_eq!(
            error.to_string(),
            "environment variable JWT_SECRET is required but not set"
        );
        let blank = required(&source(&[(env::JWT_SECRET, "  ")]), env::JWT_SECRET);
        assert!(matches!(blank, Err(ConfigError::Missing { .. })));
    }

    #[test]
    fn rabbitmq_urls_are_split_trimmed_and_checked() {
        let urls = rabbitmq_urls(&source(&[(
            env::RABBITMQ_URLS,
            "amqp://guest:guest@rabbitmq1:5672/, amqp://guest:guest@rabbitmq2:5672/",
        )]))
        .unwrap();
        assert_eq!(
            urls,
            [
                "amqp://guest:guest@rabbitmq1:5672/",
                "amqp://guest:guest@rabbitmq2:5672/"
            ]
        );

        let error = rabbitmq_urls(&source(&[(
            env::RABBITMQ_URLS,
            "amqp://a:b@x:5672/,http://u:secret@y/",
        )]))
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("RABBITMQ_URLS"), "{message}");
        assert!(message.contains("http://u:***@y/"), "{message}");
        assert!(!message.contains("secret"), "password leaked: {message}");

        let empty_item =
            rabbitmq_urls(&source(&[(env::RABBITMQ_URLS, "amqp://x:5672/,,")])).unwrap_err();
        assert!(empty_item.to_string().contains("empty item"));
    }

    #[test]
    fn rabbitmq_credentials_are_percent_encoded_into_every_url() {
        // Every character a URL gives a meaning to, and an escape that must not be decoded.
        let password = "p/ss@w:rd %41%?#";
        let urls = rabbitmq_urls(&source(&[
            (
                env::RABBITMQ_URLS,
                "amqp://mq-0:5672/%2f,amqps://mq-1:5671/prod",
            ),
            (env::RABBITMQ_USERNAME, "order gateway"),
            (env::RABBITMQ_PASSWORD, password),
        ]))
        .unwrap();
        for url in &urls {
            let parsed = url::Url::parse(url).unwrap();
            assert_eq!(percent_decode(parsed.username()), "order gateway", "{url}");
            let decoded = percent_decode(parsed.password().unwrap());
            assert_eq!(decoded, password, "{url}");
            let redacted = redact_url(url);
            assert!(
                !redacted.contains("ss@w") && !redacted.contains("p%2Fss"),
                "{redacted}"
            );
        }
        assert!(urls[0].ends_with("@mq-0:5672/%2f"), "{}", urls[0]);
        assert!(urls[1].starts_with("amqps://"), "{}", urls[1]);

        let twice = rabbitmq_urls(&source(&[
            (env::RABBITMQ_URLS, "amqp://u:secret@mq:5672/"),
            (env::RABBITMQ_USERNAME, "u"),
            (env::RABBITMQ_PASSWORD, "other"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(twice.contains("give them once"), "{twice}");
        assert!(!twice.contains("secret"), "password leaked: {twice}");

        let orphan_password = rabbitmq_urls(&source(&[
            (env::RABBITMQ_URLS, "amqp://mq:5672/"),
            (env::RABBITMQ_PASSWORD, "secret"),
        ]))
        .unwrap_err();
        assert_eq!(
            orphan_password,
            ConfigError::Missing {
                variable: env::RABBITMQ_USERNAME
            }
        );
    }

    /// What lapin (amq-protocol-uri) does to a URL's user and password.
    fn percent_decode(value: &str) -> String {
        percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .unwrap()
            .into_owned()
    }

    #[test]
    fn a_url_that_does_not_parse_is_never_echoed() {
        // A raw '/' in the password: the authority ends there, so no parser finds the password.
        let raw = "amqp://user:pa/ss@mq:5672/";
        let redacted = redact_url(raw);
        assert_eq!(redacted, "amqp://<not a valid URL>");
        let error = rabbitmq_urls(&source(&[(env::RABBITMQ_URLS, raw)]))
            .unwrap_err()
            .to_string();
        assert!(!error.contains("ss@mq"), "password leaked: {error}");
    }

    #[test]
    fn host_port_is_validated() {
        assert_eq!(
            host_port(&source(&[(env::REDIS_ADDR, "redis:6379")]), env::REDIS_ADDR).unwrap(),
            "redis:6379"
        );
        for bad in ["redis", ":6379", "redis:port", "redis:70000"] {
            let error = host_port(&source(&[(env::REDIS_ADDR, bad)]), env::REDIS_ADDR)
                .expect_err(bad)
                .to_string();
            assert!(error.contains("REDIS_ADDR"), "{error}");
        }
    }

    #[test]
    fn parsed_or_uses_default_and_reports_bad_values() {
        assert_eq!(admin_port(&source(&[])).unwrap(), 9090);
        assert_eq!(
            admin_port(&source(&[(env::ADMIN_PORT, "9100")])).unwrap(),
            9100
        );
        let error = admin_port(&source(&[(env::ADMIN_PORT, "nine")])).unwrap_err();
        assert!(matches!(
            error,
            ConfigError::Invalid {
                variable: "ADMIN_PORT",
                ..
            }
        ));
    }

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        assert_eq!(
            redact_url("amqp://u:p@ss@host/vhost"),
            "amqp://u:***@host/vhost"
        );
    }
}
