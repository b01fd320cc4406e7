//! Splitting a command line into words as a POSIX shell does (the rules of Go's
//! `google/shlex`, which `llb.Shlex` uses), so `run_shlex` gives the arguments Go would.

/// Splits `command` into words: whitespace separates, single quotes keep everything, double
/// quotes keep everything but backslash escapes, a backslash outside quotes escapes the next
/// character, and `#` at the start of a word comments out the rest of the line.
///
/// ```
/// assert_eq!(
///     pf_buildkit::llb::shlex_split(r#"sh -c "echo hi > /hi.txt""#).unwrap(),
///     ["sh", "-c", "echo hi > /hi.txt"],
/// );
/// ```
///
/// # Errors
/// What is unterminated: a quote or a trailing backslash.
pub fn split(command: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\\' => {
                word.push(chars.next().ok_or("a backslash at the end")?);
                in_word = true;
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next().ok_or("an unterminated single quote")? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next().ok_or("an unterminated double quote")? {
                        '"' => break,
                        '\\' => word.push(chars.next().ok_or("an unterminated double quote")?),
                        c => word.push(c),
                    }
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn words_quotes_and_escapes() {
        assert_eq!(
            split(r#"sh -c "date > /cache/stamp; cp /cache/stamp /out/stamp; ls /tmpfs""#).unwrap(),
            [
                "sh",
                "-c",
                "date > /cache/stamp; cp /cache/stamp /out/stamp; ls /tmpfs"
            ]
        );
        assert_eq!(split(r"a\ b 'c d' e").unwrap(), ["a b", "c d", "e"]);
        assert_eq!(split("a #comment\nb").unwrap(), ["a", "b"]);
        assert_eq!(split(r#"x"y z"w"#).unwrap(), ["xy zw"]);
        assert!(split("'open").is_err());
        assert!(split(r#""open"#).is_err());
    }
}
