//! Errors as the user meets them: each belongs to the place whose action failed (a panel, or the
//! side bar's project box) and is shown there, with a Dismiss button, until dismissed or until
//! that place starts its next job. Every message uses one wording for the same failure, naming
//! the path (the engine's loaders say "no such file or folder"; the operating system's
//! "No such file or directory (os error 2)" is rewritten to match).

use super::{AppCommand, PanelKind};

/// Where an error is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPlace {
    /// The panel whose action (or background job) failed.
    Panel(PanelKind),
    /// Opening or saving a project file (the side bar).
    Project,
}

/// The errors on show, at most one per place (a newer one replaces the older).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Errors {
    shown: Vec<(ErrorPlace, String)>,
}

impl Errors {
    /// Shows `message` at `place`, in the app's one wording.
    pub fn set(&mut self, place: ErrorPlace, message: impl AsRef<str>) {
        self.dismiss(place);
        self.shown.push((place, plain_wording(message.as_ref())));
    }

    /// The error shown at `place`, if any.
    pub fn get(&self, place: ErrorPlace) -> Option<&str> {
        self.shown
            .iter()
            .find(|(p, _)| *p == place)
            .map(|(_, m)| m.as_str())
    }

    /// Closes the error at `place`.
    pub fn dismiss(&mut self, place: ErrorPlace) {
        self.shown.retain(|(p, _)| *p != place);
    }

    /// True when no error is shown anywhere.
    pub fn is_empty(&self) -> bool {
        self.shown.is_empty()
    }
}

/// Operating-system phrasings of common I/O failures and the app's wording for each.
const OS_WORDING: [(&str, &str); 5] = [
    (
        "No such file or directory (os error 2)",
        "no such file or folder",
    ),
    (
        "The system cannot find the file specified. (os error 2)",
        "no such file or folder",
    ),
    (
        "The system cannot find the path specified. (os error 3)",
        "no such file or folder",
    ),
    ("Permission denied (os error 13)", "permission denied"),
    ("Is a directory (os error 21)", "is a folder, not a file"),
];

/// Rewrites the operating system's phrasing of an I/O failure into the app's wording, so the same
/// failure reads the same in every panel.
pub fn plain_wording(message: &str) -> String {
    let mut out = message.to_string();
    for (os, plain) in OS_WORDING {
        out = out.replace(os, plain);
    }
    out
}

/// The message for a failed read or write of `path`: the path, then what went wrong.
pub fn io_message(path: &std::path::Path, e: &std::io::Error) -> String {
    plain_wording(&format!("{}: {e}", path.display()))
}

/// The path typed in a required field, or what is missing.
pub fn required_path(what: &str, typed: &str) -> Result<std::path::PathBuf, String> {
    let typed = typed.trim();
    if typed.is_empty() {
        Err(format!("no {what} given: type its path or use Browse"))
    } else {
        Ok(std::path::PathBuf::from(typed))
    }
}

/// The error shown at `place` as a red line with a Dismiss button (nothing when there is none).
pub fn error_banner(
    ui: &mut egui::Ui,
    errors: &Errors,
    place: ErrorPlace,
    cmds: &mut Vec<AppCommand>,
) {
    let Some(message) = errors.get(place) else {
        return;
    };
    egui::Frame::new()
        .fill(ui.visuals().error_fg_color.gamma_multiply(0.12))
        .inner_margin(4.0)
        .corner_radius(3.0)
        .show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                ui.colored_label(ui.visuals().error_fg_color, format!("error: {message}"));
                if ui
                    .small_button("Dismiss")
                    .on_hover_text("Close this message")
                    .clicked()
                {
                    cmds.push(AppCommand::DismissError(place));
                }
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OS phrasing of a missing file reads like the corpus loader's, path first.
    #[test]
    fn a_missing_file_reads_the_same_everywhere() {
        let from_os = std::fs::read_to_string("/no/such/selfret/file.jsonl").unwrap_err();
        let message = io_message(
            std::path::Path::new("/no/such/selfret/file.jsonl"),
            &from_os,
        );
        assert_eq!(
            message,
            "/no/such/selfret/file.jsonl: no such file or folder"
        );
        assert_eq!(
            plain_wording("q.jsonl: No such file or directory (os error 2)"),
            "q.jsonl: no such file or folder"
        );
    }

    /// One error per place; setting one place leaves the others; dismissing closes only it.
    #[test]
    fn errors_belong_to_their_place() {
        let mut errors = Errors::default();
        let train = ErrorPlace::Panel(PanelKind::Train);
        let eval = ErrorPlace::Panel(PanelKind::Evaluate);
        errors.set(train, "first");
        errors.set(train, "second");
        errors.set(eval, "bad query file");
        assert_eq!(errors.get(train), Some("second"));
        assert_eq!(errors.get(ErrorPlace::Project), None);
        errors.dismiss(train);
        assert_eq!(errors.get(train), None);
        assert_eq!(errors.get(eval), Some("bad query file"));
        errors.dismiss(eval);
        assert!(errors.is_empty());
    }

    /// An empty required field says what is missing instead of failing on an empty path.
    #[test]
    fn an_empty_path_says_what_is_missing() {
        assert_eq!(
            required_path("corpus path", "  "),
            Err("no corpus path given: type its path or use Browse".to_string())
        );
        assert_eq!(
            required_path("corpus path", " a.jsonl "),
            Ok(std::path::PathBuf::from("a.jsonl"))
        );
    }
}
