//! Structured logs with `tracing`: JSON lines when stdout is not a terminal (in a pod, where a log
//! collector parses them), human-readable text on a terminal.

use std::io::IsTerminal;

use pipeline_contract::env;
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, Source};

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Logging settings from `LOG_FORMAT` and `LOG_LEVEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

impl LogConfig {
    pub fn from_source(
        source: &impl Source,
        stdout_is_terminal: bool,
    ) -> Result<Self, ConfigError> {
        let format = match source.get(env::LOG_FORMAT).as_deref().map(str::trim) {
            None | Some("") => {
                if stdout_is_terminal {
                    LogFormat::Text
                } else {
                    LogFormat::Json
                }
            }
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: env::LOG_FORMAT,
                    problem: format!("{other:?} is neither \"json\" nor \"text\""),
                });
            }
        };
        let filter = source
            .get(env::LOG_LEVEL)
            .filter(|value| !value.trim().is_empty())
            .unwrap_or_else(|| "info".to_owned());
        EnvFilter::try_new(&filter).map_err(|error| ConfigError::Invalid {
            variable: env::LOG_LEVEL,
            problem: format!("{filter:?}: {error}"),
        })?;
        Ok(Self { format, filter })
    }
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    // `try_init` so a second call (tests) is harmless rather than a panic.
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // The innermost span's fields (the delivery's queue and message id) on every line.
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Reads the log configuration from the process environment.
pub fn from_env() -> Result<LogConfig, ConfigError> {
    LogConfig::from_source(&crate::config::ProcessEnv, std::io::stdout().is_terminal())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn format_defaults_follow_the_terminal() {
        let empty: BTreeMap<&str, &str> = BTreeMap::new();
        assert_eq!(
            LogConfig::from_source(&empty, true).unwrap().format,
            LogFormat::Text
        );
        assert_eq!(
            LogConfig::from_source(&empty, false).unwrap().format,
            LogFormat::Json
        );
        assert_eq!(
            LogConfig::from_source(&empty, false).unwrap().filter,
            "info"
        );
    }

    #[test]
    fn explicit_settings_win_and_bad_ones_are_named() {
        let source = BTreeMap::from([
            (env::LOG_FORMAT, "text"),
            (env::LOG_LEVEL, "gateway=debug,info"),
        ]);
        let config = LogConfig::from_source(&source, false).unwrap();
        assert_eq!(config.format, LogFormat::Text);
        assert_eq!(config.filter, "gateway=debug,info");

        let bad = BTreeMap::from([(env::LOG_FORMAT, "xml")]);
        let error = LogConfig::from_source(&bad, false).unwrap_err().to_string();
        assert!(error.contains("LOG_FORMAT"), "{error}");

        let bad_level = BTreeMap::from([(env::LOG_LEVEL, "=[")]);
        let error = LogConfig::from_source(&bad_level, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("LOG_LEVEL"), "{error}");
    }
}
