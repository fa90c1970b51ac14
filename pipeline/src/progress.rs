//! The device operator's progress protocol as plain state: what the sources said as they ended
//! (read to the end, or stopped at a hold) and where that lets the operator go as its inputs'
//! frontier moves: process up to a time (a checkpoint cut first), finish a bounded input, or
//! leave its state unfinished for a stopped job's checkpoint. `dataflow.rs` wires it to timely;
//! the tests below drive it without.

/// Where a cut stands for the device operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutAt {
    /// The cut's event time.
    pub at: i64,
    /// Whether the operator processes to exactly the cut: not if it had already passed it, or
    /// the state it resumed from had (a cut announced ahead of every operator and after the
    /// resumed state rules both out; such a cut is given up rather than saved wrong).
    pub exact: bool,
}

/// What the device operator does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing: the frontier has not moved past the time it holds.
    Wait,
    /// Process readings before `to` and timers before `timers`, then save `cut` if there is
    /// one; `more` when the frontier is past `to` (the operator runs again at once).
    Advance {
        /// Readings before this time.
        to: u64,
        /// Timers before this time (at most `to`).
        timers: i64,
        /// The cut `to` stops at.
        cut: Option<CutAt>,
        /// The frontier is past `to`.
        more: bool,
    },
    /// Every source read its input to the end: process everything, timers only before the
    /// input's last watermark, and close every window.
    Finish {
        /// The least final data watermark of the sources' partitions.
        last: Option<i64>,
    },
    /// The job is stopping: the state goes into the checkpoint unfinished.
    Stop,
}

fn as_ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// What the sources said as they ended.
#[derive(Debug)]
pub struct Progress {
    sources: usize,
    finished: usize,
    /// The least final data watermark of finished sources: no timer fires at or after it.
    last: Option<i64>,
    /// The least hold of stopped sources: the frontier is not taken past it on the strength of
    /// a stopped source having dropped its capability.
    floor: Option<u64>,
    /// Everything before this event time is in the state the operator resumed from.
    through: i64,
}

impl Progress {
    /// The protocol over `sources` source workers, the operator resumed with everything before
    /// `through`.
    pub fn new(sources: usize, through: i64) -> Progress {
        Progress {
            sources,
            finished: 0,
            last: None,
            floor: None,
            through,
        }
    }

    /// A source is done: stopped at `hold`, or `finished` with its partitions' least final data
    /// watermark `last`.
    pub fn source_done(&mut self, hold: Option<u64>, finished: bool, last: Option<i64>) {
        if let Some(hold) = hold {
            self.floor = Some(self.floor.map_or(hold, |x| x.min(hold)));
        }
        if finished {
            self.finished += 1;
        }
        if let Some(l) = last {
            self.last = Some(self.last.map_or(l, |x| x.min(l)));
        }
    }

    /// What to do with the inputs' frontier at `input` (`None`: both inputs are done) and the
    /// capability at `held`; `next_cut(f)` is the earliest cut before `f` the operator has not
    /// saved.
    pub fn next(
        &self,
        input: Option<u64>,
        held: u64,
        next_cut: impl FnOnce(i64) -> Option<i64>,
    ) -> Next {
        match input.map(|f| self.floor.map_or(f, |x| f.min(x))) {
            Some(f) if f > held => {
                // A cut first: the state it keeps is what events before it produced.
                let cut = next_cut(as_ms(f));
                let to = cut.map_or(f, |at| u64::try_from(at).unwrap_or(0));
                let timers = self.last.map_or(as_ms(to), |l| as_ms(to).min(l));
                Next::Advance {
                    to,
                    timers,
                    cut: cut.map(|at| CutAt {
                        at,
                        exact: to >= held && at >= self.through,
                    }),
                    more: to < f,
                }
            }
            Some(_) => Next::Wait,
            None if self.finished == self.sources => Next::Finish { last: self.last },
            None => Next::Stop,
        }
    }

    /// Where a stopped operator's state stands: everything before its capability, or the state
    /// it resumed from if that is further.
    pub fn stopped_through(&self, held: u64) -> i64 {
        as_ms(held).max(self.through)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_cut(_: i64) -> Option<i64> {
        None
    }

    #[test]
    fn the_frontier_is_followed_until_a_stopped_source_holds_it() {
        let mut p = Progress::new(2, 0);
        assert_eq!(p.next(Some(100), 100, no_cut), Next::Wait);
        assert_eq!(
            p.next(Some(300), 100, no_cut),
            Next::Advance {
                to: 300,
                timers: 300,
                cut: None,
                more: false
            }
        );
        p.source_done(Some(250), false, None);
        assert_eq!(
            p.next(Some(300), 100, no_cut),
            Next::Advance {
                to: 250,
                timers: 250,
                cut: None,
                more: false
            },
            "not past the stopped source's hold"
        );
        assert_eq!(p.next(Some(300), 250, no_cut), Next::Wait);
        assert_eq!(p.next(None, 250, no_cut), Next::Stop, "one source stopped");
        assert_eq!(p.stopped_through(250), 250);
    }

    #[test]
    fn finished_sources_cap_timers_and_end_the_input() {
        let mut p = Progress::new(2, 0);
        p.source_done(None, true, Some(900));
        p.source_done(None, true, Some(700));
        assert_eq!(
            p.next(Some(1_000), 0, no_cut),
            Next::Advance {
                to: 1_000,
                timers: 700,
                cut: None,
                more: false
            }
        );
        assert_eq!(
            p.next(None, 1_000, no_cut),
            Next::Finish { last: Some(700) }
        );
        let mut p = Progress::new(2, 0);
        p.source_done(None, true, None);
        assert_eq!(p.next(None, 0, no_cut), Next::Stop, "one of two finished");
    }

    #[test]
    fn a_cut_before_the_frontier_is_processed_to_first() {
        let p = Progress::new(1, 2_000);
        assert_eq!(
            p.next(Some(5_000), 1_000, |f| (f > 3_000).then_some(3_000)),
            Next::Advance {
                to: 3_000,
                timers: 3_000,
                cut: Some(CutAt {
                    at: 3_000,
                    exact: true
                }),
                more: true
            }
        );
        assert_eq!(
            p.next(Some(5_000), 1_000, |_| Some(1_500)),
            Next::Advance {
                to: 1_500,
                timers: 1_500,
                cut: Some(CutAt {
                    at: 1_500,
                    exact: false
                }),
                more: true
            },
            "a cut inside the resumed state is given up"
        );
        assert_eq!(p.stopped_through(1_000), 2_000);
    }
}
