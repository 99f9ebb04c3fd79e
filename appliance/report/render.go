package report

import (
	"bytes"
	"fmt"
	"html/template"
	"strings"
	"time"
)

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

// Markdown is the report as Markdown.
func (r Report) Markdown() string {
	var b strings.Builder
	title := "Privacy report"
	if r.Unit != "" {
		title += ": unit " + r.Unit
	}
	fmt.Fprintf(&b, "# %s\n\nGenerated %s from the configuration and state the unit runs on.\n\n", title, r.GeneratedAt.Format(time.RFC3339))
	if len(r.Flags) > 0 {
		b.WriteString("## Needs attention\n\n")
		for _, f := range r.Flags {
			fmt.Fprintf(&b, "- **%s**\n", f)
		}
		b.WriteString("\n")
	}
	for _, f := range r.Flows {
		fmt.Fprintf(&b, "## %s\n\n| | |\n|---|---|\n", f.Name)
		for _, it := range f.Items {
			v := mdEscape(it.Value)
			if it.Flag {
				v = "**" + v + "** (flagged)"
			}
			fmt.Fprintf(&b, "| %s | %s |\n", mdEscape(it.Label), v)
		}
		if len(f.Fields) > 0 {
			b.WriteString("\nFields that leave the unit:\n\n| document | field | why the fleet needs it |\n|---|---|---|\n")
			for _, fd := range f.Fields {
				fmt.Fprintf(&b, "| %s | `%s` | %s |\n", fd.Doc, fd.Name, mdEscape(fd.Purpose))
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("## Never stored\n\n| claim | how | enforced by the tests |\n|---|---|---|\n")
	for _, c := range r.NeverStored {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", c.Claim, mdEscape(c.How), "`"+strings.Join(c.Tests, "`, `")+"`")
	}
	b.WriteString("\n## Shutter, LED and self-check\n\n")
	if !r.ChecksAt.IsZero() {
		fmt.Fprintf(&b, "Last run %s.\n\n", r.ChecksAt.Format(time.RFC3339))
	}
	b.WriteString("| check | result | detail |\n|---|---|---|\n")
	for _, c := range r.Checks {
		res := "ok"
		if !c.OK {
			res = "**FAIL**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", mdEscape(c.Name), res, mdEscape(c.Detail))
	}
	b.WriteString("\n## Software and configuration in force\n\n| | |\n|---|---|\n")
	for _, it := range r.Software {
		fmt.Fprintf(&b, "| %s | %s |\n", it.Label, mdEscape(it.Value))
	}
	return b.String()
}

var page = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Privacy report{{if eq (len .) 1}}{{with index . 0}}{{if .Unit}}: unit {{.Unit}}{{end}}{{end}}{{else}}: {{len .}} units{{end}}</title>
<style>
body{font:11pt/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#111;max-width:52em;margin:2em auto;padding:0 1em}
h1{font-size:18pt;margin-bottom:.2em}h2{font-size:13pt;margin-top:1.6em;border-bottom:1px solid #999}
table{border-collapse:collapse;width:100%;margin:.5em 0}th,td{border:1px solid #bbb;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eee}td:first-child{width:30%}.flag{background:#fde2e1;font-weight:bold}.fail{color:#a00;font-weight:bold}
.attention{border:2px solid #a00;padding:.5em 1em;background:#fff4f4}code{font-size:95%}section+section{margin-top:3em}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}table,tr{break-inside:avoid}section+section{break-before:page}@page{margin:18mm}}
</style></head><body>
{{range .}}<section>
<h1>Privacy report{{if .Unit}}: unit {{.Unit}}{{end}}</h1>
<p>Generated {{.GeneratedAt.Format "2006-01-02 15:04:05 UTC"}} from the configuration and state the unit runs on.</p>
{{if .Flags}}<div class="attention"><h2>Needs attention</h2><ul>{{range .Flags}}<li>{{.}}</li>{{end}}</ul></div>{{end}}
{{range .Flows}}<h2>{{.Name}}</h2><table>{{range .Items}}<tr><td>{{.Label}}</td><td{{if .Flag}} class="flag"{{end}}>{{.Value}}</td></tr>{{end}}</table>
{{if .Fields}}<p>Fields that leave the unit:</p><table><tr><th>document</th><th>field</th><th>why the fleet needs it</th></tr>{{range .Fields}}<tr><td>{{.Doc}}</td><td><code>{{.Name}}</code></td><td>{{.Purpose}}</td></tr>{{end}}</table>{{end}}
{{end}}
<h2>Never stored</h2><table><tr><th>claim</th><th>how</th><th>enforced by the tests</th></tr>{{range .NeverStored}}<tr><td>{{.Claim}}</td><td>{{.How}}</td><td>{{range .Tests}}<code>{{.}}</code><br>{{end}}</td></tr>{{end}}</table>
<h2>Shutter, LED and self-check</h2>{{if not .ChecksAt.IsZero}}<p>Last run {{.ChecksAt.Format "2006-01-02 15:04:05 UTC"}}.</p>{{end}}
<table><tr><th>check</th><th>result</th><th>detail</th></tr>{{range .Checks}}<tr><td>{{.Name}}</td><td>{{if .OK}}ok{{else}}<span class="fail">FAIL</span>{{end}}</td><td>{{.Detail}}</td></tr>{{end}}</table>
<h2>Software and configuration in force</h2><table>{{range .Software}}<tr><td>{{.Label}}</td><td>{{.Value}}</td></tr>{{end}}</table>
</section>{{end}}
</body></html>
`))

// HTML is the report as one self-contained, print-ready page (no external
// resources).
func (r Report) HTML() string { return HTMLAll([]Report{r}) }

// HTMLAll is several units' reports on one page, each starting a printed
// page of its own.
func HTMLAll(rs []Report) string {
	var b bytes.Buffer
	if err := page.Execute(&b, rs); err != nil {
		return "<!DOCTYPE html><p>report: " + template.HTMLEscapeString(err.Error())
	}
	return b.String()
}
