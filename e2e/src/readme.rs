//! The README's walkthrough as data: the commands of its code block and the output documented
//! under each, so a test can run the block as written and the README cannot drift from what is
//! tested.
//!
//! The block's grammar is what a reader sees:
//! - a line not starting with `#` is a shell command (continued by a trailing `\`);
//! - `#` lines right under a command are its documented output, one per line, and a comment at
//!   the end of a command's last line is its one-line output; `...` in an output stands for any
//!   text (a token, timestamps);
//! - `#` lines after a blank line and before the next command are prose.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// One command of the walkthrough and the output the README documents for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The shell text, continuation lines included, without its trailing comment.
    pub command: String,
    /// The documented output lines; empty when none is documented (an assignment).
    pub expected: Vec<String>,
}

impl Step {
    /// `NAME=value` for a plain shell assignment such as `TOKEN="<your_jwt_token>"`.
    pub fn assignment(&self) -> Option<(&str, &str)> {
        let (name, value) = self.command.split_once('=')?;
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        (is_name && !value.contains(char::is_whitespace)).then_some((name, value))
    }

    /// A `curl` that only reads (a GET: no `-X`, no body). Reading again changes nothing, so a
    /// test may repeat it until asynchronous work shows.
    pub fn is_read(&self) -> bool {
        let words: Vec<&str> = self.command.split_whitespace().collect();
        words.first() == Some(&"curl")
            && !words
                .iter()
                .any(|word| matches!(*word, "-X" | "--request" | "-d" | "--data"))
    }

    /// The JSON body of a `curl ... -d '<json>'`.
    pub fn json_body(&self) -> Option<Value> {
        let (_, rest) = self.command.split_once("-d '")?;
        let (body, _) = rest.split_once('\'')?;
        serde_json::from_str(body).ok()
    }

    /// The `http://` and `https://` URLs the command names, without quotes.
    pub fn urls(&self) -> Vec<&str> {
        self.command
            .split_whitespace()
            .map(|word| word.trim_matches(|c| c == '"' || c == '\''))
            .filter(|word| word.starts_with("http://") || word.starts_with("https://"))
            .collect()
    }

    /// The documented output as one text.
    pub fn expected_output(&self) -> String {
        self.expected.join("\n")
    }
}

/// The first fenced code block after the heading whose text is `heading` (without the `#`s).
pub fn code_block_under(markdown: &str, heading: &str) -> Result<String> {
    let mut lines = markdown.lines();
    lines
        .by_ref()
        .find(|line| line.starts_with('#') && line.trim_start_matches('#').trim() == heading)
        .with_context(|| format!("no heading {heading:?}"))?;
    lines
        .by_ref()
        .find(|line| line.starts_with("```"))
        .with_context(|| format!("no code block under {heading:?}"))?;
    let mut block = String::new();
    for line in lines {
        if line.starts_with("```") {
            return Ok(block);
        }
        block.push_str(line);
        block.push('\n');
    }
    bail!("the code block under {heading:?} is not closed")
}

/// The steps of a walkthrough block (see the module documentation for its grammar).
pub fn steps(block: &str) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    // Whether `#` lines now document the last command's output (no blank line since it).
    let mut under_command = false;
    let mut continued: Option<String> = None;
    for line in block.lines() {
        if let Some(mut command) = continued.take() {
            command.push('\n');
            command.push_str(line);
            if line.ends_with('\\') {
                continued = Some(command);
            } else {
                push_command(&mut steps, &command);
                under_command = true;
            }
        } else if line.trim().is_empty() {
            under_command = false;
        } else if let Some(comment) = line.trim_start().strip_prefix('#') {
            if under_command {
                let step = steps.last_mut().context("output without a command")?;
                step.expected.push(comment.trim().to_owned());
            }
        } else if line.ends_with('\\') {
            continued = Some(line.to_owned());
        } else {
            push_command(&mut steps, line);
            under_command = true;
        }
    }
    ensure!(
        continued.is_none(),
        "the block ends inside a continued command"
    );
    Ok(steps)
}

fn push_command(steps: &mut Vec<Step>, text: &str) {
    let (command, comment) = split_trailing_comment(text);
    steps.push(Step {
        command: command.trim_end().to_owned(),
        expected: comment.map(|c| c.trim().to_owned()).into_iter().collect(),
    });
}

/// Splits a shell text at a `#` that starts a comment: unquoted and after whitespace.
fn split_trailing_comment(text: &str) -> (&str, Option<&str>) {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut previous = ' ';
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && !single {
            escaped = true;
        } else if c == '\'' && !double {
            single = !single;
        } else if c == '"' && !single {
            double = !double;
        } else if c == '#' && !single && !double && previous.is_whitespace() {
            return (&text[..at], Some(&text[at + 1..]));
        }
        previous = c;
    }
    (text, None)
}

/// Whether `actual` is `expected`, where each `...` in `expected` stands for any text.
pub fn output_matches(expected: &str, actual: &str) -> bool {
    let pieces: Vec<&str> = expected.split("...").collect();
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if pieces.len() == 1 {
        return actual == expected;
    }
    if actual.len() < first.len() + last.len()
        || !actual.starts_with(first)
        || !actual.ends_with(last)
    {
        return false;
    }
    let mut rest = &actual[first.len()..actual.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = r#"# Prose: outputs are the lines under each command.

redis-cli SET inventory:sku 100          # OK
curl -X POST http://localhost:8080/login -H "Content-Type: application/json" \
     -d '{"email":"a@example.com","password":"p # not a comment"}'
# {"token":"eyJ..."}
TOKEN="<your_jwt_token>"

# More prose.
curl "http://localhost:8081/metrics?sku=sku"
# {"processed_orders_count":1,
# "inventory_level":98}
"#;

    #[test]
    fn commands_outputs_and_prose_are_told_apart() {
        let steps = steps(BLOCK).unwrap();
        assert_eq!(steps.len(), 4, "{steps:#?}");
        assert_eq!(steps[0].command, "redis-cli SET inventory:sku 100");
        assert_eq!(steps[0].expected, ["OK"]);
        assert!(steps[1].command.ends_with(r#""p # not a comment"}'"#));
        assert!(steps[1].command.contains("\\\n     -d"));
        assert_eq!(steps[1].expected, [r#"{"token":"eyJ..."}"#]);
        assert_eq!(
            steps[2].assignment(),
            Some(("TOKEN", "\"<your_jwt_token>\""))
        );
        assert!(steps[2].expected.is_empty());
        assert_eq!(
            steps[3].expected_output(),
            "{\"processed_orders_count\":1,\n\"inventory_level\":98}"
        );
    }

    #[test]
    fn reads_bodies_and_urls_are_found() {
        let steps = steps(BLOCK).unwrap();
        assert!(!steps[0].is_read());
        assert!(!steps[1].is_read());
        assert!(steps[3].is_read());
        assert_eq!(
            steps[1].json_body().unwrap()["email"],
            Value::from("a@example.com")
        );
        assert_eq!(steps[1].urls(), ["http://localhost:8080/login"]);
        assert_eq!(steps[3].urls(), ["http://localhost:8081/metrics?sku=sku"]);
        assert!(steps[0].assignment().is_none());
    }

    #[test]
    fn an_ellipsis_stands_for_any_text() {
        assert!(output_matches("OK", "OK"));
        assert!(!output_matches("OK", "OK "));
        assert!(output_matches(
            r#"{"token":"eyJ..."}"#,
            r#"{"token":"eyJhb.c.d"}"#
        ));
        assert!(!output_matches(r#"{"token":"eyJ..."}"#, r#"{"error":"x"}"#));
        assert!(output_matches(
            r#"{"id":"o","status":"notified",...}"#,
            r#"{"id":"o","status":"notified","qty":2}"#
        ));
        assert!(!output_matches(
            r#"{"id":"o","status":"notified",...}"#,
            r#"{"id":"o","status":"processed","qty":2}"#
        ));
        assert!(output_matches("a...b...c", "a-b-c"));
        assert!(!output_matches("a...b...c", "a-c"));
        assert!(!output_matches("ab...ba", "aba"));
    }

    #[test]
    fn the_block_is_found_under_its_heading() {
        let markdown = "# T\n\n## Walk\n\ntext\n\n```bash\nls   # x\n```\n\n```\nother\n```\n";
        assert_eq!(code_block_under(markdown, "Walk").unwrap(), "ls   # x\n");
        assert!(code_block_under(markdown, "Missing").is_err());
        assert!(code_block_under("## Walk\n```\nopen\n", "Walk").is_err());
    }

    #[test]
    fn a_dangling_continuation_is_an_error() {
        assert!(steps("curl \\\n").is_err());
    }
}
