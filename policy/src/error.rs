/// Errors of the policy layer. Load and check errors point at file, line and rule so a data
/// owner can fix them; enforcement errors never include data values.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The file is not valid YAML or does not have the policy's shape.
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: u64,
        message: String,
    },
    /// A rule is well-formed YAML but says something invalid.
    #[error("{file}:{line}: rule \"{rule}\": {message}")]
    Rule {
        file: String,
        line: u64,
        rule: String,
        message: String,
    },
}
