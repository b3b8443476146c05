{{/* Labels every object carries. */}}
{{- define "lb.labels" -}}
app.kubernetes.io/name: lb
{{- end }}

{{/* The image, its tag defaulting to the chart's appVersion. */}}
{{- define "lb.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* One TOML string array or inline-table array item per interface (a name, or a map
     with name and xdp_mode). toJson would write {"name":...}, which is not TOML. */}}
{{- define "lb.tomlInterfaces" -}}
[{{- range $i, $x := . }}{{ if $i }}, {{ end }}
{{- if kindIs "map" $x -}}
{ name = {{ required "interfaces: a table needs a name" $x.name | toString | quote }}{{ with $x.xdp_mode }}, xdp_mode = {{ . | toString | quote }}{{ end }} }
{{- else -}}
{{ $x | toString | quote }}
{{- end }}
{{- end }}]
{{- end }}
