//! XEP-0004 data forms: parse what a client submits, build what the server
//! offers (configuration forms, search forms, XEP-0128 extensions).
//!
//! One representation for every module that speaks forms (MUC room
//! configuration, PubSub node configuration and publish-options, MAM
//! queries, ad-hoc commands, push options). Parsing is lenient where the
//! XEP allows (a missing `type` on a field is `text-single`) and strict
//! where a wrong value must be refused (an unknown form type).

use crate::ns;
use crate::stanza::attr_name;
use minidom::Element;

/// The form's `type` attribute (XEP-0004 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormType {
    /// The form-processing entity asks the form-submitting entity to fill it.
    Form,
    /// The form-submitting entity's data.
    Submit,
    /// The form-submitting entity cancels the submission.
    Cancel,
    /// Data returned (search results, XEP-0128 extensions).
    Result,
}

impl FormType {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            FormType::Form => "form",
            FormType::Submit => "submit",
            FormType::Cancel => "cancel",
            FormType::Result => "result",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "form" => FormType::Form,
            "submit" => FormType::Submit,
            "cancel" => FormType::Cancel,
            "result" => FormType::Result,
            _ => return None,
        })
    }
}

/// A field's `type` (XEP-0004 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldType {
    Boolean,
    Fixed,
    Hidden,
    JidMulti,
    JidSingle,
    ListMulti,
    ListSingle,
    TextMulti,
    TextPrivate,
    #[default]
    TextSingle,
}

impl FieldType {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Boolean => "boolean",
            FieldType::Fixed => "fixed",
            FieldType::Hidden => "hidden",
            FieldType::JidMulti => "jid-multi",
            FieldType::JidSingle => "jid-single",
            FieldType::ListMulti => "list-multi",
            FieldType::ListSingle => "list-single",
            FieldType::TextMulti => "text-multi",
            FieldType::TextPrivate => "text-private",
            FieldType::TextSingle => "text-single",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "boolean" => FieldType::Boolean,
            "fixed" => FieldType::Fixed,
            "hidden" => FieldType::Hidden,
            "jid-multi" => FieldType::JidMulti,
            "jid-single" => FieldType::JidSingle,
            "list-multi" => FieldType::ListMulti,
            "list-single" => FieldType::ListSingle,
            "text-multi" => FieldType::TextMulti,
            "text-private" => FieldType::TextPrivate,
            "text-single" => FieldType::TextSingle,
            _ => return None,
        })
    }
}

/// One `<field/>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Field {
    /// `var`; absent only on `fixed` fields.
    pub var: Option<String>,
    pub kind: FieldType,
    pub label: Option<String>,
    pub desc: Option<String>,
    pub required: bool,
    pub values: Vec<String>,
    /// `<option/>`s of list fields: (label, value).
    pub options: Vec<(Option<String>, String)>,
}

impl Field {
    /// A field with a variable name, a type and values.
    pub fn new(var: &str, kind: FieldType, values: Vec<String>) -> Self {
        Field {
            var: Some(var.to_string()),
            kind,
            values,
            ..Field::default()
        }
    }

    /// A `text-single` field with one value.
    pub fn text(var: &str, value: impl Into<String>) -> Self {
        Field::new(var, FieldType::TextSingle, vec![value.into()])
    }

    /// A `boolean` field.
    pub fn boolean(var: &str, value: bool) -> Self {
        Field::new(var, FieldType::Boolean, vec![bool_str(value).to_string()])
    }

    /// A `hidden` `FORM_TYPE` field.
    pub fn form_type(value: &str) -> Self {
        Field::new("FORM_TYPE", FieldType::Hidden, vec![value.to_string()])
    }

    /// Set the label.
    pub fn label(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// Add list options (label, value).
    pub fn options<I, L, V>(mut self, opts: I) -> Self
    where
        I: IntoIterator<Item = (L, V)>,
        L: Into<String>,
        V: Into<String>,
    {
        self.options
            .extend(opts.into_iter().map(|(l, v)| (Some(l.into()), v.into())));
        self
    }

    /// Mark as required.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// The first value.
    pub fn value(&self) -> Option<&str> {
        self.values.first().map(String::as_str)
    }

    fn from_element(el: &Element) -> Result<Self, FormError> {
        let kind = match el.attr("type") {
            None => FieldType::TextSingle,
            Some(t) => FieldType::parse(t).ok_or_else(|| FormError::BadFieldType(t.to_string()))?,
        };
        let var = el.attr("var").map(str::to_string);
        if var.is_none() && kind != FieldType::Fixed {
            return Err(FormError::MissingVar);
        }
        let mut f = Field {
            var,
            kind,
            label: el.attr("label").map(str::to_string),
            ..Field::default()
        };
        for c in el.children() {
            if c.ns() != ns::DATA_FORMS {
                continue;
            }
            match c.name() {
                "value" => f.values.push(c.text()),
                "desc" => f.desc = Some(c.text()),
                "required" => f.required = true,
                "option" => {
                    let value = c
                        .get_child("value", ns::DATA_FORMS)
                        .map(Element::text)
                        .unwrap_or_default();
                    f.options.push((c.attr("label").map(str::to_string), value));
                }
                _ => {}
            }
        }
        Ok(f)
    }

    fn to_element(&self) -> Element {
        let mut el = Element::builder("field", ns::DATA_FORMS)
            .attr(attr_name("type"), self.kind.as_str())
            .attr(attr_name("var"), self.var.clone())
            .attr(attr_name("label"), self.label.clone())
            .build();
        if let Some(d) = &self.desc {
            el.append_child(
                Element::builder("desc", ns::DATA_FORMS)
                    .append(d.as_str())
                    .build(),
            );
        }
        if self.required {
            el.append_child(Element::bare("required", ns::DATA_FORMS));
        }
        for v in &self.values {
            el.append_child(
                Element::builder("value", ns::DATA_FORMS)
                    .append(v.as_str())
                    .build(),
            );
        }
        for (label, value) in &self.options {
            el.append_child(
                Element::builder("option", ns::DATA_FORMS)
                    .attr(attr_name("label"), label.clone())
                    .append(
                        Element::builder("value", ns::DATA_FORMS)
                            .append(value.as_str())
                            .build(),
                    )
                    .build(),
            );
        }
        el
    }
}

/// Why a form was refused (answer `bad-request` / `not-acceptable`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("not a jabber:x:data form")]
    NotAForm,
    #[error("unknown form type {0:?}")]
    BadFormType(String),
    #[error("unknown field type {0:?}")]
    BadFieldType(String),
    #[error("a field without var")]
    MissingVar,
    #[error("field {var:?}: {reason}")]
    BadValue { var: String, reason: String },
}

/// A data form (`<x xmlns='jabber:x:data'/>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataForm {
    pub kind: FormType,
    pub title: Option<String>,
    pub instructions: Vec<String>,
    pub fields: Vec<Field>,
}

impl DataForm {
    /// An empty form of a type.
    pub fn new(kind: FormType) -> Self {
        DataForm {
            kind,
            title: None,
            instructions: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// A form with a hidden `FORM_TYPE` field first.
    pub fn with_form_type(kind: FormType, form_type: &str) -> Self {
        let mut f = DataForm::new(kind);
        f.fields.push(Field::form_type(form_type));
        f
    }

    /// Set the title.
    pub fn title(mut self, title: &str) -> Self {
        self.title = Some(title.to_string());
        self
    }

    /// Add an instructions line.
    pub fn instructions(mut self, text: &str) -> Self {
        self.instructions.push(text.to_string());
        self
    }

    /// Add a field.
    pub fn field(mut self, f: Field) -> Self {
        self.fields.push(f);
        self
    }

    /// Parse an `<x xmlns='jabber:x:data'/>` element.
    pub fn parse(el: &Element) -> Result<Self, FormError> {
        if !el.is("x", ns::DATA_FORMS) {
            return Err(FormError::NotAForm);
        }
        let t = el.attr("type").unwrap_or("form");
        let kind = FormType::parse(t).ok_or_else(|| FormError::BadFormType(t.to_string()))?;
        let mut form = DataForm::new(kind);
        for c in el.children() {
            if c.ns() != ns::DATA_FORMS {
                continue;
            }
            match c.name() {
                "title" => form.title = Some(c.text()),
                "instructions" => form.instructions.push(c.text()),
                "field" => form.fields.push(Field::from_element(c)?),
                _ => {}
            }
        }
        Ok(form)
    }

    /// The first data form among `parent`'s children, parsed.
    pub fn find_in(parent: &Element) -> Option<Result<Self, FormError>> {
        parent.get_child("x", ns::DATA_FORMS).map(DataForm::parse)
    }

    /// The value of the hidden `FORM_TYPE` field.
    pub fn form_type(&self) -> Option<&str> {
        self.get("FORM_TYPE").and_then(Field::value)
    }

    /// The field named `var`.
    pub fn get(&self, var: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.var.as_deref() == Some(var))
    }

    /// The first value of the field named `var`.
    pub fn value(&self, var: &str) -> Option<&str> {
        self.get(var).and_then(Field::value)
    }

    /// All values of the field named `var` (empty when absent).
    pub fn values(&self, var: &str) -> &[String] {
        self.get(var).map(|f| f.values.as_slice()).unwrap_or(&[])
    }

    /// The boolean value of `var` (XEP-0004: `1`/`true`, `0`/`false`);
    /// `Ok(None)` when absent or empty, an error for anything else.
    pub fn boolean(&self, var: &str) -> Result<Option<bool>, FormError> {
        match self.value(var) {
            None | Some("") => Ok(None),
            Some(v) => parse_bool(v).map(Some).ok_or_else(|| FormError::BadValue {
                var: var.to_string(),
                reason: format!("{v:?} is not a boolean"),
            }),
        }
    }

    /// The value of `var` parsed as a number; `Ok(None)` when absent or empty.
    pub fn number<T: std::str::FromStr>(&self, var: &str) -> Result<Option<T>, FormError> {
        match self.value(var) {
            None | Some("") => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| FormError::BadValue {
                var: var.to_string(),
                reason: format!("{v:?} is not a number"),
            }),
        }
    }

    /// Replace (or add) a field's values.
    pub fn set(&mut self, var: &str, kind: FieldType, values: Vec<String>) {
        match self
            .fields
            .iter_mut()
            .find(|f| f.var.as_deref() == Some(var))
        {
            Some(f) => f.values = values,
            None => self.fields.push(Field::new(var, kind, values)),
        }
    }

    /// The `<x/>` element.
    pub fn to_element(&self) -> Element {
        let mut el = Element::builder("x", ns::DATA_FORMS)
            .attr(attr_name("type"), self.kind.as_str())
            .build();
        if let Some(t) = &self.title {
            el.append_child(
                Element::builder("title", ns::DATA_FORMS)
                    .append(t.as_str())
                    .build(),
            );
        }
        for i in &self.instructions {
            el.append_child(
                Element::builder("instructions", ns::DATA_FORMS)
                    .append(i.as_str())
                    .build(),
            );
        }
        for f in &self.fields {
            el.append_child(f.to_element());
        }
        el
    }
}

impl From<&DataForm> for Element {
    fn from(f: &DataForm) -> Element {
        f.to_element()
    }
}

/// XEP-0004's boolean values.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn bool_str(v: bool) -> &'static str {
    if v { "1" } else { "0" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<DataForm, FormError> {
        let el: Element = xml.parse().expect("test xml");
        DataForm::parse(&el)
    }

    #[test]
    fn parses_a_submitted_form() {
        let f = parse(
            "<x xmlns='jabber:x:data' type='submit'>\
               <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
               <field var='with'><value>juliet@capulet.lit</value></field>\
               <field var='flag' type='boolean'><value>true</value></field>\
               <field var='max'><value> 20 </value></field>\
               <field var='jids' type='jid-multi'><value>a@b</value><value>c@d</value></field>\
             </x>",
        )
        .expect("parses");
        assert_eq!(f.kind, FormType::Submit);
        assert_eq!(f.form_type(), Some("urn:xmpp:mam:2"));
        assert_eq!(f.value("with"), Some("juliet@capulet.lit"));
        assert_eq!(f.boolean("flag"), Ok(Some(true)));
        assert_eq!(f.boolean("missing"), Ok(None));
        assert_eq!(f.number::<u32>("max"), Ok(Some(20)));
        assert_eq!(f.values("jids"), ["a@b", "c@d"]);
        assert!(f.values("none").is_empty());
    }

    #[test]
    fn refuses_bad_forms() {
        assert_eq!(
            parse("<x xmlns='jabber:x:data' type='nope'/>"),
            Err(FormError::BadFormType("nope".into()))
        );
        assert_eq!(
            parse("<x xmlns='jabber:x:data' type='submit'><field type='wrong' var='a'/></x>"),
            Err(FormError::BadFieldType("wrong".into()))
        );
        assert_eq!(
            parse("<x xmlns='jabber:x:data' type='submit'><field><value>v</value></field></x>"),
            Err(FormError::MissingVar)
        );
        assert_eq!(parse("<x xmlns='other'/>"), Err(FormError::NotAForm));
        let f = parse(
            "<x xmlns='jabber:x:data' type='submit'><field var='b'><value>maybe</value></field>\
             <field var='n'><value>x</value></field></x>",
        )
        .expect("parses");
        assert!(f.boolean("b").is_err());
        assert!(f.number::<u32>("n").is_err());
    }

    #[test]
    fn round_trips_a_built_form() {
        let f =
            DataForm::with_form_type(FormType::Form, "http://jabber.org/protocol/muc#roomconfig")
                .title("Configuration")
                .instructions("Fill it")
                .field(Field::text("muc#roomconfig_roomname", "Room").label("Name"))
                .field(Field::boolean("muc#roomconfig_persistentroom", true).required())
                .field(
                    Field::new(
                        "muc#roomconfig_whois",
                        FieldType::ListSingle,
                        vec!["moderators".into()],
                    )
                    .options([("Moderators", "moderators"), ("Anyone", "anyone")]),
                );
        let el = f.to_element();
        let back = DataForm::parse(&el).expect("parses");
        assert_eq!(back, f);
        assert_eq!(
            back.boolean("muc#roomconfig_persistentroom"),
            Ok(Some(true))
        );
        assert_eq!(
            back.get("muc#roomconfig_whois").map(|f| f.options.len()),
            Some(2)
        );
    }

    #[test]
    fn set_replaces_or_adds() {
        let mut f = DataForm::new(FormType::Submit);
        f.set("a", FieldType::TextSingle, vec!["1".into()]);
        f.set("a", FieldType::TextSingle, vec!["2".into()]);
        assert_eq!(f.fields.len(), 1);
        assert_eq!(f.value("a"), Some("2"));
    }
}
