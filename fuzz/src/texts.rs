//! The text front-ends as fuzz targets: the trace parser (and, for traces that
//! parse, a replay and a check against the model) and the manifest validator.
//! Neither may panic on any input; a manifest that validates must also parse.

use i6300esb::WatchdogAction;

/// Parse `data` as a trace; replay and check whatever parses.
pub fn run_trace(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(trace) = vmpulse::replay::parse(text) {
        let report = vmpulse::replay::check(&trace, WatchdogAction::Reset);
        // Rendering the model's own trace must parse back.
        let replayed = vmpulse::replay::replay(&trace, WatchdogAction::Reset);
        let rendered = vmpulse::replay::render(&trace, &replayed);
        assert!(
            vmpulse::replay::parse(&rendered).is_ok(),
            "the model's own trace does not parse: {report:?}"
        );
    }
}

/// Validate `data` as a VirtualMachine manifest.
pub fn run_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let v = vmpulse::manifest::validate_str(text);
    assert_eq!(
        v.spec.is_some(),
        vmpulse::manifest::parse_str(text).is_ok(),
        "validate_str and parse_str disagree"
    );
    // Echoed values are cut: no message grows with the input.
    for p in v.problems.iter().chain(&v.warnings) {
        assert!(p.message.chars().count() <= 1000, "{p}");
    }
    // Nesting past the limit never reaches the parser.
    use vmpulse::manifest::limits::{nesting_depth, MAX_NESTING_DEPTH};
    if nesting_depth(text, MAX_NESTING_DEPTH) > MAX_NESTING_DEPTH {
        assert!(
            v.spec.is_none() && v.problems.len() == 1,
            "{:?}",
            v.problems
        );
    }
}
