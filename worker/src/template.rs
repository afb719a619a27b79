//! Rendering an agent's argv and stdin templates. Placeholders are replaced in a single pass over the template,
//! so text inside the message is never itself expanded, and each argv element stays one argument: no shell ever
//! parses the result.

/// Values for `{message}`, `{context}`, `{job_id}`, `{workspace}`, `{history_file}` (a session turn's
/// history, empty outside a session) and `{agent_session}` (the agent's own session id from the session's
/// turns before, empty where there is none).
pub struct Vars<'a> {
    pub message: &'a str,
    pub context: &'a str,
    pub job_id: &'a str,
    pub workspace: &'a str,
    pub history_file: &'a str,
    pub agent_session: &'a str,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "message" => Some(self.message),
            "context" => Some(self.context),
            "job_id" => Some(self.job_id),
            "workspace" => Some(self.workspace),
            "history_file" => Some(self.history_file),
            "agent_session" => Some(self.agent_session),
            _ => None,
        }
    }
}

/// Replaces known `{name}` placeholders; unknown braces are kept literally.
pub fn render(template: &str, vars: &Vars<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find('}')
            .and_then(|close| vars.get(&after[..close]).map(|v| (close, v)))
        {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(message: &str) -> Vars<'_> {
        Vars {
            message,
            context: "ctx",
            job_id: "J",
            workspace: "/w",
            history_file: "/w/.fleet/history.json",
            agent_session: "s-1",
        }
    }

    #[test]
    fn placeholders_are_replaced_once_and_message_text_is_not_expanded() {
        assert_eq!(
            render("--msg={message}", &vars("hi {job_id}")),
            "--msg=hi {job_id}"
        );
        assert_eq!(
            render("{job_id}:{context}:{workspace}", &vars("")),
            "J:ctx:/w"
        );
        assert_eq!(
            render("{history_file}", &vars("")),
            "/w/.fleet/history.json"
        );
    }

    #[test]
    fn unknown_and_unbalanced_braces_stay_literal() {
        assert_eq!(render("{x} {message", &vars("m")), "{x} {message");
        assert_eq!(render("{{message}}", &vars("m")), "{m}");
    }

    #[test]
    fn shell_metacharacters_pass_through_as_text() {
        let m = "$(rm -rf /); `id` && echo 'x' | cat > /etc/passwd";
        assert_eq!(render("{message}", &vars(m)), m);
    }
}
