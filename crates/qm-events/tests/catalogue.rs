//! `docs/events.md` carries the payload tables generated from the payload types. Run with
//! `QM_UPDATE_DOCS=1` to rewrite them after changing a payload.

#[test]
fn docs_events_md_matches_the_payload_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/events.md");
    let document = std::fs::read_to_string(&path).expect("docs/events.md");
    let begin = document.find(qm_events::docs::BEGIN_MARKER).expect("the begin marker in docs/events.md");
    let end = document.find(qm_events::docs::END_MARKER).expect("the end marker in docs/events.md")
        + qm_events::docs::END_MARKER.len();
    let generated = qm_events::docs::payload_tables();
    if std::env::var_os("QM_UPDATE_DOCS").is_some() {
        let updated = format!("{}{generated}{}", &document[..begin], &document[end..]);
        std::fs::write(&path, updated).expect("write docs/events.md");
        return;
    }
    assert!(
        document[begin..end] == generated,
        "docs/events.md is out of date with qm_events::payloads: run `QM_UPDATE_DOCS=1 cargo test -p qm-events --test \
         catalogue`\n\n--- generated ---\n{generated}"
    );
}
