//! XEP-0059 Result Set Management: the paging request a client puts in a
//! query (`<set><max/><after/><before/><index/></set>`) and the page
//! description the server returns (`<first index=''/><last/><count/>`).
//!
//! Used by every query that pages: MAM (XEP-0313), PubSub item retrieval,
//! disco#items of large services, MUC room lists.

use crate::ns;
use crate::stanza::attr_name;
use minidom::Element;

/// What a client asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RsmRequest {
    /// `<max/>`: at most this many items (`Some(0)` asks only for the count).
    pub max: Option<usize>,
    /// `<after/>`: the page after the item with this id.
    pub after: Option<String>,
    /// `<before/>`: the page before the item with this id; `Some("")` (an
    /// empty `<before/>`) asks for the last page.
    pub before: Option<String>,
    /// `<index/>`: the page starting at this position.
    pub index: Option<usize>,
}

/// Why a `<set/>` was refused (answer `bad-request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RsmError {
    #[error("<{0}/> is not a non-negative integer")]
    NotANumber(&'static str),
    #[error("<after/> must not be empty")]
    EmptyAfter,
}

impl RsmRequest {
    /// Parse a `<set xmlns='http://jabber.org/protocol/rsm'/>`.
    pub fn parse(set: &Element) -> Result<Self, RsmError> {
        let mut r = RsmRequest::default();
        for c in set.children() {
            if c.ns() != ns::RSM {
                continue;
            }
            match c.name() {
                "max" => {
                    r.max = Some(
                        c.text()
                            .trim()
                            .parse()
                            .map_err(|_| RsmError::NotANumber("max"))?,
                    )
                }
                "index" => {
                    r.index = Some(
                        c.text()
                            .trim()
                            .parse()
                            .map_err(|_| RsmError::NotANumber("index"))?,
                    )
                }
                "after" => {
                    let t = c.text();
                    if t.is_empty() {
                        return Err(RsmError::EmptyAfter);
                    }
                    r.after = Some(t);
                }
                "before" => r.before = Some(c.text()),
                _ => {}
            }
        }
        Ok(r)
    }

    /// The `<set/>` child of `parent`, parsed; `Ok(None)` when absent.
    pub fn find_in(parent: &Element) -> Result<Option<Self>, RsmError> {
        parent
            .get_child("set", ns::RSM)
            .map(RsmRequest::parse)
            .transpose()
    }

    /// The page size: the client's `max` or `default`, never above `cap`.
    pub fn limit(&self, default: usize, cap: usize) -> usize {
        self.max.unwrap_or(default).min(cap)
    }

    /// An empty `<before/>`: the client wants the last page.
    pub fn wants_last_page(&self) -> bool {
        self.before.as_deref() == Some("")
    }

    /// The id in `<before/>`, if a non-empty one was given.
    pub fn before_id(&self) -> Option<&str> {
        self.before.as_deref().filter(|b| !b.is_empty())
    }

    /// The request as an element (for clients and tests).
    pub fn to_element(&self) -> Element {
        let mut set = Element::bare("set", ns::RSM);
        let mut add = |name: &str, text: String| {
            set.append_child(Element::builder(name, ns::RSM).append(text).build());
        };
        if let Some(m) = self.max {
            add("max", m.to_string());
        }
        if let Some(a) = &self.after {
            add("after", a.clone());
        }
        if let Some(b) = &self.before {
            add("before", b.clone());
        }
        if let Some(i) = self.index {
            add("index", i.to_string());
        }
        set
    }
}

/// What the server says about the page it returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RsmResult {
    /// Id of the first item of the page, with its index in the whole set.
    pub first: Option<(String, Option<usize>)>,
    /// Id of the last item of the page.
    pub last: Option<String>,
    /// Number of items in the whole set.
    pub count: Option<usize>,
}

impl RsmResult {
    /// The `<set/>` element (XEP-0059 §2.1: an empty page has no first/last).
    pub fn to_element(&self) -> Element {
        let mut set = Element::bare("set", ns::RSM);
        if let Some((id, index)) = &self.first {
            set.append_child(
                Element::builder("first", ns::RSM)
                    .attr(attr_name("index"), index.map(|i| i.to_string()))
                    .append(id.as_str())
                    .build(),
            );
        }
        if let Some(id) = &self.last {
            set.append_child(
                Element::builder("last", ns::RSM)
                    .append(id.as_str())
                    .build(),
            );
        }
        if let Some(c) = self.count {
            set.append_child(
                Element::builder("count", ns::RSM)
                    .append(c.to_string())
                    .build(),
            );
        }
        set
    }

    /// Parse a result `<set/>` (for clients and tests).
    pub fn parse(set: &Element) -> Self {
        let mut r = RsmResult::default();
        if let Some(f) = set.get_child("first", ns::RSM) {
            r.first = Some((f.text(), f.attr("index").and_then(|i| i.parse().ok())));
        }
        r.last = set.get_child("last", ns::RSM).map(Element::text);
        r.count = set
            .get_child("count", ns::RSM)
            .and_then(|c| c.text().trim().parse().ok());
        r
    }

    /// The page description of `ids` (the ids of the returned items, in
    /// order), the page's position in the set and the set's size.
    pub fn of_page<S: AsRef<str>>(
        ids: &[S],
        first_index: Option<usize>,
        count: Option<usize>,
    ) -> Self {
        RsmResult {
            first: ids.first().map(|f| (f.as_ref().to_string(), first_index)),
            last: ids.last().map(|l| l.as_ref().to_string()),
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().expect("test xml")
    }

    #[test]
    fn parses_requests() {
        let r = RsmRequest::parse(&el(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>abc</after></set>",
        ))
        .expect("parses");
        assert_eq!(r.max, Some(10));
        assert_eq!(r.after.as_deref(), Some("abc"));
        assert!(!r.wants_last_page());
        assert_eq!(r.limit(50, 5), 5);
        let last = RsmRequest::parse(&el(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>3</max><before/></set>",
        ))
        .expect("parses");
        assert!(last.wants_last_page());
        assert_eq!(last.before_id(), None);
        assert_eq!(last.limit(50, 100), 3);
        assert_eq!(RsmRequest::default().limit(50, 100), 50);
    }

    #[test]
    fn refuses_bad_requests() {
        assert_eq!(
            RsmRequest::parse(&el(
                "<set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set>"
            )),
            Err(RsmError::NotANumber("max"))
        );
        assert_eq!(
            RsmRequest::parse(&el(
                "<set xmlns='http://jabber.org/protocol/rsm'><after/></set>"
            )),
            Err(RsmError::EmptyAfter)
        );
    }

    #[test]
    fn request_and_result_round_trip() {
        let r = RsmRequest {
            max: Some(5),
            after: None,
            before: Some(String::new()),
            index: Some(2),
        };
        assert_eq!(RsmRequest::parse(&r.to_element()), Ok(r));
        let res = RsmResult::of_page(&["a", "b", "c"], Some(4), Some(10));
        let back = RsmResult::parse(&res.to_element());
        assert_eq!(back, res);
        assert_eq!(back.first, Some(("a".to_string(), Some(4))));
        assert_eq!(back.last.as_deref(), Some("c"));
        let empty = RsmResult::of_page::<&str>(&[], None, Some(0));
        assert_eq!(empty.to_element().children().count(), 1);
    }
}
