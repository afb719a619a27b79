//! aider (`--message ... --no-pretty --no-stream`) has no machine-readable stream: what it prints is the answer,
//! after its banner. Its `Tokens: 1.2k sent, 85 received. Cost: $0.01 message, ...` line gives the usage.

use fleet_shared::wire::Usage;

use super::{Parse, Said, Tally};

/// The banner lines aider prints before it answers.
const BANNER: &[&str] = &[
    "Aider v",
    "Model:",
    "Main model:",
    "Weak model:",
    "Editor model:",
    "Git repo:",
    "Repo-map:",
    "Added ",
    "Use /help",
    "Warning:",
    "https://aider.chat/",
];

pub struct Aider;

/// `1.2k` → 1200, `85` → 85, `3.4M` → 3400000.
fn tokens(word: &str) -> Option<u64> {
    let (number, scale) = match word.chars().last()? {
        'k' => (&word[..word.len() - 1], 1e3),
        'M' => (&word[..word.len() - 1], 1e6),
        _ => (word, 1.0),
    };
    Some((number.parse::<f64>().ok()? * scale).round() as u64)
}

/// The usage line: `Tokens: 1.2k sent, 85 received. Cost: $0.0031 message, $0.0031 session.`
fn usage_line(line: &str) -> Option<Usage> {
    let rest = line.strip_prefix("Tokens: ")?;
    let (sent, rest) = rest.split_once(" sent, ")?;
    let (received, rest) = rest.split_once(" received.")?;
    let cost = rest
        .trim()
        .strip_prefix("Cost: $")
        .and_then(|c| c.split_once(' '))
        .and_then(|(c, _)| c.parse().ok());
    Some(Usage {
        input_tokens: tokens(sent)?,
        output_tokens: tokens(received)?,
        cost_usd: cost,
    })
}

impl Parse for Aider {
    fn line(&mut self, line: &str, tally: &mut Tally) -> Option<Vec<Said>> {
        if let Some(usage) = usage_line(line) {
            tally.usage = Some(usage.clone());
            return Some(vec![Said::Usage(usage)]);
        }
        // Every other line goes on as output; those after the banner are the answer.
        let banner = BANNER.iter().any(|b| line.starts_with(b));
        let leading_blank = tally.answer.text.is_empty() && line.trim().is_empty();
        if !banner && !leading_blank {
            tally.answer.push(line);
            tally.answer.push("\n");
        }
        None
    }

    fn finish(&mut self, tally: &mut Tally) {
        let trimmed = tally.answer.text.trim_end().len();
        tally.answer.text.truncate(trimmed);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::run;
    use super::*;
    use fleet_shared::config::AgentKind;

    const TRANSCRIPT: &str = include_str!("../../../tests/transcripts/aider.txt");

    #[test]
    fn the_answer_follows_the_banner_and_the_tokens_line_is_the_usage() {
        let (said, report) = run(AgentKind::Aider, TRANSCRIPT);
        assert_eq!(
            said.iter().filter(|s| s.is_some()).count(),
            1,
            "only the tokens line is taken: {said:?}"
        );
        assert_eq!(
            report.answer.as_deref(),
            Some("The two files are a.txt and b.txt.")
        );
        assert_eq!(
            report.usage,
            Some(Usage {
                input_tokens: 1200,
                output_tokens: 85,
                cost_usd: Some(0.0031)
            })
        );
        assert_eq!(tokens("3.4M"), Some(3_400_000));
    }
}
