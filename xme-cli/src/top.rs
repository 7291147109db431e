//! `xme top`: a live view of one region (ratatui over crossterm), or one
//! frame as plain text (`--once`, rendered on ratatui's `TestBackend`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ratatui::Frame;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table};
use xme_core::process;

use crate::CliError;
use crate::model::{self, RegionInfo, Snapshot};
use crate::show::{age, alive, bytes, guard_line, lock_line, region_line};

/// The rates' names, in the order of [`Snapshot::counters`].
const RATE_NAMES: [&str; 3] = ["calls/s", "sets/s", "status/s"];
/// The sparklines' span.
const HISTORY: Duration = Duration::from_secs(60);

/// What one frame shows: the region, its snapshot, rates and their history.
#[derive(Debug)]
pub struct View {
    /// The region.
    pub info: RegionInfo,
    /// Its contents.
    pub snap: Snapshot,
    /// Per second, from the last two readings.
    pub rates: [f64; 3],
    /// Each rate at every reading of the last minute, oldest first.
    pub history: [VecDeque<u64>; 3],
    /// Lines scrolled down in the lists.
    pub scroll: usize,
    last: Option<(Instant, [u64; 3])>,
    keep: usize,
}

impl View {
    /// A view of `snap`, with no rates yet; keeps a minute of readings
    /// taken every `interval`.
    pub fn new(info: RegionInfo, snap: Snapshot, interval: Duration) -> View {
        let counters = snap.counters();
        View {
            info,
            snap,
            rates: [0.0; 3],
            history: Default::default(),
            scroll: 0,
            last: Some((Instant::now(), counters)),
            keep: (HISTORY.as_millis() / interval.as_millis().max(1)).max(2) as usize,
        }
    }

    /// Takes a new reading taken at `at`: rates from the counters' change.
    pub fn update(&mut self, info: RegionInfo, snap: Snapshot, at: Instant) {
        let counters = snap.counters();
        if let Some((then, before)) = self.last {
            let dt = at.duration_since(then).as_secs_f64();
            if dt > 0.0 {
                for i in 0..3 {
                    // A counter that went back is a region made again under
                    // the same name: no rate from that pair.
                    let rate = counters[i].saturating_sub(before[i]) as f64 / dt;
                    self.rates[i] = rate;
                    self.history[i].push_back(rate.round() as u64);
                    if self.history[i].len() > self.keep {
                        self.history[i].pop_front();
                    }
                }
            }
        }
        self.last = Some((at, counters));
        self.info = info;
        self.snap = snap;
    }

    /// Rows the lists hold (what scrolling moves through).
    fn list_rows(&self) -> usize {
        match &self.snap {
            Snapshot::Manager(m) => m.statuses.len() + m.keys.len(),
            Snapshot::Monitor(m) => {
                serde_json::to_string_pretty(&m.messages).map_or(0, |t| t.lines().count())
            }
        }
    }

    /// Lines a frame needs to show everything (for `--once`).
    pub fn full_height(&self) -> u16 {
        let lists = match &self.snap {
            Snapshot::Manager(m) => m.statuses.len() + m.keys.len() + 6,
            Snapshot::Monitor(_) => self.list_rows() + 2,
        };
        (2 + 4 + 5 + lists).min(2000) as u16
    }
}

/// Draws `view` on `frame`.
pub fn render(frame: &mut Frame<'_>, view: &View) {
    let [head, rates, summary, lists] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(4),
        Constraint::Length(5),
        Constraint::Min(3),
    ])
    .areas(frame.area());
    let info = &view.info;
    frame.render_widget(
        Paragraph::new(vec![
            Line::from(format!(
                "xme top: {}  users {}",
                region_line(info),
                info.users.len(),
            ))
            .bold(),
            Line::from("q quit  ↑↓ PgUp PgDn scroll").dim(),
        ]),
        head,
    );
    let columns = Layout::horizontal([Constraint::Ratio(1, 3); 3]).split(rates);
    for i in 0..3 {
        let data: Vec<u64> = view.history[i].iter().copied().collect();
        frame.render_widget(
            Sparkline::default()
                .block(Block::bordered().title(format!("{} {:.1}", RATE_NAMES[i], view.rates[i])))
                .data(&data),
            columns[i],
        );
    }
    match &view.snap {
        Snapshot::Manager(m) => {
            let table = format!(
                "table: {}/{} keys  arena {} of {} pages used ({})  {} values stored",
                m.keys_claimed,
                m.capacity,
                m.pages.total - m.pages.free,
                m.pages.total,
                bytes(m.arena_bytes as u64),
                m.writes
            );
            frame.render_widget(
                Paragraph::new(vec![
                    Line::from(guard_line(&m.guard)),
                    Line::from(format!("lock: {}", lock_line(&m.lock))),
                    Line::from(table),
                ])
                .block(Block::bordered().title("state")),
                summary,
            );
            render_manager_lists(frame, lists, view, m);
        }
        Snapshot::Monitor(m) => {
            frame.render_widget(
                Paragraph::new(vec![
                    Line::from(format!(
                        "messages: {} of {} bytes, {} publishes",
                        m.bytes, m.capacity, m.publishes
                    )),
                    Line::from(format!("lock: {}", lock_line(&m.lock))),
                ])
                .block(Block::bordered().title("state")),
                summary,
            );
            let text = serde_json::to_string_pretty(&m.messages).unwrap_or_default();
            let lines: Vec<Line> = text.lines().skip(view.scroll).map(Line::from).collect();
            frame.render_widget(
                Paragraph::new(lines).block(Block::bordered().title("messages")),
                lists,
            );
        }
    }
}

fn render_manager_lists(
    frame: &mut Frame<'_>,
    area: Rect,
    view: &View,
    m: &xme_shm::ManagerSnapshot,
) {
    let statuses = m.statuses.len().saturating_sub(view.scroll);
    let [top, bottom] = Layout::vertical([
        Constraint::Length(
            u16::try_from(statuses)
                .unwrap_or(u16::MAX)
                .saturating_add(3),
        ),
        Constraint::Min(3),
    ])
    .areas(area);
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let rows = m.statuses.iter().skip(view.scroll).map(|s| {
        Row::new(vec![
            s.operator.to_string(),
            s.status.pid.to_string(),
            alive(process::is_alive(s.status.pid as i32)).to_string(),
            age(model::age_s(s.status.time_ms)),
            s.status.status.clone(),
        ])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(18),
                Constraint::Length(10),
                Constraint::Length(6),
                Constraint::Length(7),
                Constraint::Fill(1),
            ],
        )
        .header(Row::new(["OPERATOR", "PID", "", "AGE", "STATUS"]).style(bold))
        .block(Block::bordered().title(format!("statuses ({})", m.statuses.len()))),
        top,
    );
    let skip_keys = view.scroll.saturating_sub(m.statuses.len());
    let rows = m.keys.iter().skip(skip_keys).map(|k| {
        let shown = match model::value_hint(k.value_len, &k.preview) {
            Some(v) => v.to_string(),
            None => model::hex(&k.preview),
        };
        Row::new(vec![k.key.clone(), bytes(k.value_len as u64), shown])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(24),
                Constraint::Length(10),
                Constraint::Fill(1),
            ],
        )
        .header(Row::new(["KEY", "SIZE", "VALUE"]).style(bold))
        .block(Block::bordered().title(format!("keys ({})", m.keys.len()))),
        bottom,
    );
}

/// `view` drawn on a `width` × `height` screen, as plain text lines
/// (trailing spaces trimmed).
pub fn frame_text(view: &View, width: u16, height: u16) -> String {
    let mut terminal =
        ratatui::Terminal::new(TestBackend::new(width, height)).expect("a test backend");
    terminal
        .draw(|f| render(f, view))
        .expect("drawing on a test backend");
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .map(|x| buffer[(x, y)].symbol())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Set by SIGINT, SIGTERM or SIGHUP while the live view runs.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc_int) {
    STOP.store(true, Ordering::Relaxed);
}
#[allow(non_camel_case_types)]
type libc_int = std::ffi::c_int;

fn catch_stop_signals() -> Result<(), CliError> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(|e| CliError::Terminal(e.into()))?;
    }
    Ok(())
}

/// Restores the terminal when dropped: on return, on error, and on
/// unwinding (ratatui's panic hook restores it before the message).
struct Restore;
impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// `xme top NAME`.
pub fn top(name: &str, once: bool, interval: Duration) -> Result<(), CliError> {
    let (info, snap) = model::inspect(name)?;
    let mut view = View::new(info, snap, interval);
    // Not a terminal (a pipe, a file, a script): the live view cannot
    // draw, so print one frame as --once does.
    if once || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        // Two readings, so the rates say something.
        std::thread::sleep(interval);
        let (info, snap) = model::inspect(name)?;
        view.update(info, snap, Instant::now());
        print!("{}", frame_text(&view, 100, view.full_height()));
        return Ok(());
    }
    catch_stop_signals()?;
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut next = Instant::now() + interval;
    loop {
        terminal.draw(|f| render(f, &view))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)?
            && let Event::Key(key) = event::read()?
            && key.kind != KeyEventKind::Release
        {
            let page = terminal.size()?.height.saturating_sub(14).max(1) as usize;
            let last = view.list_rows().saturating_sub(1);
            match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(());
                }
                KeyCode::Down | KeyCode::Char('j') => view.scroll = (view.scroll + 1).min(last),
                KeyCode::Up | KeyCode::Char('k') => view.scroll = view.scroll.saturating_sub(1),
                KeyCode::PageDown => view.scroll = (view.scroll + page).min(last),
                KeyCode::PageUp => view.scroll = view.scroll.saturating_sub(page),
                KeyCode::Home => view.scroll = 0,
                _ => {}
            }
        }
        if STOP.load(Ordering::Relaxed) {
            return Ok(());
        }
        if Instant::now() >= next {
            next = Instant::now() + interval;
            match model::inspect(name) {
                Ok((info, snap)) => view.update(info, snap, Instant::now()),
                Err(e) => {
                    return Err(CliError::Disappeared {
                        name: name.into(),
                        reason: xme_core::error_chain(&e),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use xme_core::Operator;
    use xme_core::inspect::HeaderSnapshot;
    use xme_shm::{
        GuardSnapshot, KeySnapshot, LockSnapshot, LockType, ManagerSnapshot, PageCensus,
        ProcessStatus, StatusSnapshot,
    };

    /// A pid no process has (above the kernel's pid_max limit).
    const NO_PID: u32 = 0x4000_0000;

    fn snapshot(calls: u64, writes: u64, reports: u64) -> Snapshot {
        let me = std::process::id();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let status = |op: u64, pid: u32, text: &str| StatusSnapshot {
            operator: Operator::from_id(op).unwrap(),
            status: ProcessStatus {
                status: text.into(),
                pid,
                time_ms: now_ms - 5_400,
                serial: op,
                last_word: false,
            },
        };
        Snapshot::Manager(Box::new(ManagerSnapshot {
            header: header(),
            capacity: 100,
            slots: 256,
            keys_claimed: 7,
            arena_bytes: 1 << 20,
            pages: PageCensus {
                total: 16,
                free: 14,
                ..PageCensus::default()
            },
            keys: vec![
                KeySnapshot {
                    key: "greeting".into(),
                    value_len: 6,
                    preview: postcard::to_stdvec("hello").unwrap(),
                },
                KeySnapshot {
                    key: "answer".into(),
                    value_len: 1,
                    preview: vec![42],
                },
            ],
            statuses: vec![
                status(0xaa, me, "crunching"),
                status(0xbb, NO_PID, "crashed here"),
            ],
            status_reports: reports,
            writes,
            guard: GuardSnapshot {
                pid: Some(me),
                calls_queued: 3,
                calls_run: calls,
                ring_capacity: 1024,
                last_beat_ns: None,
                enabled: Some(true),
            },
            lock: Some(LockSnapshot {
                lock_type: LockType::Mutex,
                holder: Some((NO_PID, Operator::from_id(0xcc))),
                readers: vec![],
                waiters: 2,
                writer: Operator::ADMIN,
                authorised: vec![],
            }),
            changing: false,
        }))
    }

    fn header() -> HeaderSnapshot {
        HeaderSnapshot {
            version: 0x4d47_0005,
            size: 1 << 21,
            creator_pid: NO_PID,
            creator_start: 0,
            token: 1,
        }
    }

    #[test]
    fn a_frame_from_a_known_state() {
        let info = RegionInfo {
            name: "jobs".into(),
            kind: Kind::Manager,
            header: header(),
            creator_alive: false,
            users: vec![],
            users_unknown: false,
            age: None,
        };
        let t0 = Instant::now();
        let mut view = View::new(info.clone(), snapshot(0, 0, 0), Duration::from_millis(250));
        // Two seconds later: 200 calls, 50 sets and 4 reports.
        view.last = Some((t0, [0, 0, 0]));
        view.update(info, snapshot(200, 50, 4), t0 + Duration::from_secs(2));
        let me = std::process::id();
        let frame = frame_text(&view, 100, view.full_height());
        let lines: Vec<&str> = frame.lines().collect();
        assert_eq!(
            lines[0],
            format!("xme top: jobs  Manager (layout 5, 2.0 MiB)  creator {NO_PID} DEAD  users 0"),
            "{frame}"
        );
        assert!(lines[2].contains("calls/s 100.0"), "{frame}");
        assert!(lines[2].contains("sets/s 25.0"), "{frame}");
        assert!(lines[2].contains("status/s 2.0"), "{frame}");
        assert!(
            lines[7].starts_with(&format!(
                "│guard: pid {me} alive  queued 3  run 200  idle check never"
            )),
            "{frame}"
        );
        assert!(
            lines[8].starts_with(&format!(
                "│lock: MUTEX, held by pid {NO_PID} (DEAD) as 00000000000000cc, 0 readers, 2 waiting"
            )),
            "{frame}"
        );
        assert!(
            lines[9].contains(
                "table: 7/100 keys  arena 2 of 16 pages used (1.0 MiB)  50 values stored"
            ),
            "{frame}"
        );
        let row = |needle: &str| {
            lines
                .iter()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in\n{frame}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("crunching"),
            [
                "│00000000000000aa",
                &me.to_string(),
                "alive",
                "5s",
                "crunching",
                "│"
            ]
        );
        assert_eq!(
            row("crashed here"),
            [
                "│00000000000000bb",
                &NO_PID.to_string(),
                "DEAD",
                "5s",
                "crashed",
                "here",
                "│"
            ]
        );
        assert_eq!(row("greeting"), ["│greeting", "6", "B", "\"hello\"", "│"]);
        assert_eq!(row("answer"), ["│answer", "1", "B", "2a", "│"]);
        // Scrolling moves the lists, not the state above them.
        view.scroll = 1;
        let scrolled = frame_text(&view, 100, view.full_height());
        assert!(!scrolled.contains("crunching") && scrolled.contains("crashed here"));
        assert!(scrolled.contains("held by pid"));
    }
}
