use super::*;

fn strip_all(chunks: &[&[u8]]) -> String {
    let mut stripper = AnsiStripper::default();
    chunks.iter().map(|chunk| stripper.push(chunk)).collect()
}

#[test]
fn escapes_and_control_characters_are_stripped() {
    assert_eq!(strip_all(&[b"\x1b[1;32mgreen\x1b[0m text\r\n"]), "green text\n");
    assert_eq!(strip_all(&[b"\x1b]0;window title\x07visible"]), "visible");
    assert_eq!(strip_all(&[b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"]), "link");
    assert_eq!(strip_all(&[b"\x1b(Bcharset \x1b7saved\x1b8\x1b[?25l"]), "charset saved");
    assert_eq!(strip_all(&[b"bell\x07 tab\tback\x08space"]), "bell tab\tbackspace");
    assert_eq!(strip_all(&["caf\u{e9} \u{2714}".as_bytes()]), "caf\u{e9} \u{2714}");
}

#[test]
fn sequences_and_characters_split_between_chunks_are_handled() {
    assert_eq!(strip_all(&[b"a\x1b[3", b"1mb\x1b", b"[0mc"]), "abc");
    assert_eq!(strip_all(&[b"\x1b]0;ti", b"tle\x1b", b"\\d"]), "d");
    let check = "\u{2714}".as_bytes();
    assert_eq!(strip_all(&[&check[..1], &check[1..2], &check[2..]]), "\u{2714}");
}

fn watch(rule: Option<&str>, typed: &str) -> (TaskWatch, oneshot::Receiver<()>) {
    let (matched, rx) = oneshot::channel();
    (TaskWatch::new(rule.map(|rule| Regex::new(rule).unwrap()), matched, typed), rx)
}

#[test]
fn the_echo_of_the_typed_input_is_not_output() {
    // "say DONE" typed; the terminal echoes it in two chunks, then the program answers.
    let (mut task, mut rx) = watch(Some("DONE"), "say DONE\n");
    task.push("say DO");
    task.push("NE\ngot it\n");
    assert!(rx.try_recv().is_err(), "the echo does not meet the rule");
    task.push("DONE\n");
    assert!(rx.try_recv().is_ok());
    assert_eq!(task.finish(), "got it\nDONE\n");
    // A program that does not echo: what looked like the echo's start is output.
    let (mut task, _) = watch(None, "go\n");
    task.push("go");
    task.push("t: go\n");
    assert_eq!(task.finish(), "got: go\n");
}

#[test]
fn a_long_transcript_keeps_its_end() {
    let (mut task, _) = watch(None, "");
    let line = "x".repeat(1023) + "\n";
    for _ in 0..300 {
        task.push(&line);
    }
    let text = task.finish();
    assert!(text.starts_with("[45056 earlier bytes dropped]\n"), "{}", &text[..40]);
    assert!(text.len() <= MAX_TRANSCRIPT + 64);
}
