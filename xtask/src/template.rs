//! The one template filler of xtask's generated files: the environment's Cassandra configuration,
//! the RabbitMQ cluster's `node-ctl`, and the dependency images' scripts and configuration.
//!
//! Placeholders are `{{NAME}}` (upper case, digits, `_`), which no shell script, YAML or XML
//! here uses for anything else (`@NAME@` would clash with `"$@"` and `${array[@]}`).

use anyhow::{Context, Result, bail};

/// Fills `{{NAME}}` placeholders. Every placeholder needs a value and every value a placeholder,
/// so a renamed one fails instead of leaking through. Values are inserted as they are: quoting
/// them for the file's language is the caller's.
pub fn fill(template: &str, values: &[(&str, &str)]) -> Result<String> {
    let mut text = String::with_capacity(template.len());
    let mut used = vec![false; values.len()];
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        text.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").context("template has an unclosed {{")?;
        let name = &after[..end];
        let index = values
            .iter()
            .position(|(known, _)| *known == name)
            .with_context(|| format!("no value for template placeholder {{{{{name}}}}}"))?;
        text.push_str(values[index].1);
        used[index] = true;
        rest = &after[end + 2..];
    }
    text.push_str(rest);
    if let Some(index) = used.iter().position(|used| !used) {
        bail!("template has no placeholder {{{{{}}}}}", values[index].0);
    }
    Ok(text)
}

/// Whether `text` holds a placeholder [`fill`] would fill.
pub fn has_placeholder(text: &str) -> bool {
    text.split("{{").skip(1).any(|rest| {
        rest.split_once("}}").is_some_and(|(name, _)| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_every_placeholder_and_nothing_else() {
        assert_eq!(
            fill(
                "a {{X}} \"${b[@]}\" ${c:-{{Y}}} {{X}}",
                &[("X", "1"), ("Y", "{{Z}}")]
            )
            .unwrap(),
            "a 1 \"${b[@]}\" ${c:-{{Z}}} 1"
        );
        assert!(fill("{{X}}", &[]).is_err());
        assert!(fill("{{X", &[("X", "1")]).is_err());
        assert!(fill("no placeholder", &[("X", "1")]).is_err());
    }

    #[test]
    fn finds_placeholders_but_not_other_braces() {
        assert!(has_placeholder("a {{NAME_2}} b"));
        assert!(!has_placeholder("${a} {{lower}} {{}} {b}"));
    }
}
