//! JUnit XML: one test case per policy rule, so CI test views list each gate.

use super::{num, rule_line};
use crate::consistency::report::CheckReport;
use crate::error::Result;
use crate::report::ReportError;
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

/// Renders the rules as a JUnit report.
pub fn check(r: &CheckReport) -> Result<String> {
    let mut report = Report::new("tagfix check");
    let mut suite = TestSuite::new(format!("tagfix check {:?}: {}", r.mode, r.candidate.path));
    suite.add_property(("baseline", r.baseline.path.as_str()));
    suite.add_property(("candidate", r.candidate.path.as_str()));
    suite.add_property(("candidate_sha256", r.candidate.sha256.as_str()));
    for rule in &r.rules {
        let status = if rule.passed {
            TestCaseStatus::success()
        } else {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(format!(
                "observed {} but required {} {}",
                num(rule.observed),
                rule.op,
                num(rule.threshold)
            ));
            s.set_type("threshold");
            s.set_description(rule_line(r, rule));
            s
        };
        let mut case = TestCase::new(rule.id.as_str(), status);
        case.set_classname("tagfix.check");
        case.set_system_out(rule_line(r, rule));
        suite.add_test_case(case);
    }
    report.add_test_suite(suite);
    Ok(report.to_string().map_err(ReportError::Junit)?)
}
