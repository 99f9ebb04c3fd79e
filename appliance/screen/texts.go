package screen

import "strings"

// Languages the screen speaks (display.language); DefaultLanguage when
// none is set or the one set is not among them.
var Languages = []string{"nl", "es", "nb", "en"}

// DefaultLanguage is the screen's language when none is configured.
const DefaultLanguage = "en"

// texts is every sentence the screen shows, per language. The notice is
// written as a clinic would put it on the wall: what the camera and the
// microphone do, and that nothing is kept. "LIVE" and "JOIN" stay as they
// are: they are the word on the screen and the label on the button.
type texts struct {
	Notice      string
	PressJoin   string
	Live        string // camera and microphone out
	LiveMicOff  string // camera out, microphone off
	LiveCamOff  string // microphone out, camera closed
	Private     string
	Joining     string
	Leaving     string
	Fault       string
	WhatToDo    string
	CameraShut  string
	Ready       string
	Faulty      string
	Shutter     map[string]string
	FarPeople   string // "%d" is the number of people at the far end
	TodoShutter string
	TodoDevice  string
	TodoNetwork string
	TodoOther   string
	// NextAt and DueAt name the next consultation's start ("%s" is the
	// time, 15:04); NothingDue answers a JOIN with none due.
	NextAt     string
	DueAt      string
	NothingDue string
	// Restarting answers a JOIN refused because the unit is restarting
	// into an update.
	Restarting string
	// E2EE says the call is encrypted end to end ("%s" is the safety
	// code); TodoE2EE is what to do when a join was refused because it
	// could not be.
	E2EE     string
	TodoE2EE string
}

var allTexts = map[string]texts{
	"en": {
		E2EE:        "Encrypted end to end · safety code %s",
		TodoE2EE:    "The call could not be encrypted end to end, so it was not started and nothing left the room. Press JOIN again; if it happens again, call technical support and say \"end-to-end encryption\".",
		NextAt:      "Next consultation at %s",
		DueAt:       "Consultation at %s: press JOIN to start",
		NothingDue:  "No consultation now",
		Restarting:  "Restarting to finish an update: press JOIN again in a minute or two",
		Notice:      "This room has a video consultation unit. Its camera and microphone are on only while this screen shows LIVE. Nothing is recorded: no picture or sound is stored.",
		PressJoin:   "Press JOIN to start",
		Live:        "LIVE: camera and microphone on",
		LiveMicOff:  "LIVE: camera on, microphone off",
		LiveCamOff:  "LIVE: microphone on, camera closed",
		Private:     "Private: nothing leaves the room",
		Joining:     "Connecting…",
		Leaving:     "Ending the call…",
		Fault:       "The unit has a fault",
		WhatToDo:    "What to do",
		CameraShut:  "Camera closed",
		Ready:       "Ready",
		Faulty:      "Fault",
		Shutter:     map[string]string{"closed": "camera shutter closed", "open": "camera shutter open", "opening": "camera shutter opening", "closing": "camera shutter closing", "unconfirmed": "camera shutter not confirmed"},
		FarPeople:   "%d at the far end",
		TodoShutter: "The camera shutter did not move as it should. Make sure nothing blocks it. The unit stays in fault (the light blinks red quickly) until the cause is gone; if it stays, call technical support and say \"shutter fault\".",
		TodoDevice:  "The camera or the microphone stopped working. Check that its cable is plugged in, then press JOIN again. If it happens again, call technical support.",
		TodoNetwork: "The video service could not be reached. Check that the network cable is plugged in, wait a minute and press JOIN again. If it keeps failing, call technical support.",
		TodoOther:   "Call technical support and tell them what this screen shows.",
	},
	"nl": {
		E2EE:        "End-to-end versleuteld · veiligheidscode %s",
		TodoE2EE:    "Het gesprek kon niet end-to-end versleuteld worden en is daarom niet gestart: er is niets de kamer uit gegaan. Druk opnieuw op JOIN; gebeurt het weer, bel dan de technische ondersteuning en zeg \"end-to-end-versleuteling\".",
		NextAt:      "Volgend consult om %s",
		DueAt:       "Consult om %s: druk op JOIN om te beginnen",
		NothingDue:  "Nu geen consult",
		Restarting:  "Het apparaat start opnieuw om een update af te ronden: druk over een paar minuten opnieuw op JOIN",
		Notice:      "In deze kamer staat een apparaat voor videoconsulten. De camera en de microfoon staan alleen aan zolang dit scherm LIVE toont. Er wordt niets opgenomen: beeld en geluid worden nergens bewaard.",
		PressJoin:   "Druk op JOIN om te beginnen",
		Live:        "LIVE: camera en microfoon aan",
		LiveMicOff:  "LIVE: camera aan, microfoon uit",
		LiveCamOff:  "LIVE: microfoon aan, camera dicht",
		Private:     "Privé: er gaat niets de kamer uit",
		Joining:     "Verbinden…",
		Leaving:     "Gesprek wordt beëindigd…",
		Fault:       "Het apparaat heeft een storing",
		WhatToDo:    "Wat te doen",
		CameraShut:  "Camera dicht",
		Ready:       "Gereed",
		Faulty:      "Storing",
		Shutter:     map[string]string{"closed": "cameraklep dicht", "open": "cameraklep open", "opening": "cameraklep gaat open", "closing": "cameraklep gaat dicht", "unconfirmed": "cameraklep niet bevestigd"},
		FarPeople:   "%d aan de andere kant",
		TodoShutter: "De cameraklep bewoog niet zoals het hoort. Controleer dat niets hem blokkeert. Het apparaat blijft in storing (het lampje knippert snel rood) tot de oorzaak weg is; blijft dat zo, bel dan de technische dienst en meld \"storing cameraklep\".",
		TodoDevice:  "De camera of de microfoon werkt niet meer. Controleer of de kabel erin zit en druk opnieuw op JOIN. Gebeurt het weer, bel dan de technische dienst.",
		TodoNetwork: "De videodienst is niet bereikbaar. Controleer of de netwerkkabel erin zit, wacht een minuut en druk opnieuw op JOIN. Lukt het steeds niet, bel dan de technische dienst.",
		TodoOther:   "Bel de technische dienst en vertel wat dit scherm toont.",
	},
	"es": {
		E2EE:        "Cifrado de extremo a extremo · código de seguridad %s",
		TodoE2EE:    "La llamada no se pudo cifrar de extremo a extremo, así que no se inició y nada salió de la sala. Pulse JOIN otra vez; si vuelve a pasar, llame al soporte técnico y diga \"cifrado de extremo a extremo\".",
		NextAt:      "Próxima consulta a las %s",
		DueAt:       "Consulta a las %s: pulse JOIN para empezar",
		NothingDue:  "Ahora no hay ninguna consulta",
		Restarting:  "El equipo se reinicia para terminar una actualización: pulse JOIN de nuevo en un par de minutos",
		Notice:      "En esta sala hay un equipo de videoconsulta. La cámara y el micrófono solo están encendidos mientras esta pantalla muestra LIVE. No se graba nada: no se guarda ninguna imagen ni ningún sonido.",
		PressJoin:   "Pulse JOIN para empezar",
		Live:        "LIVE: cámara y micrófono encendidos",
		LiveMicOff:  "LIVE: cámara encendida, micrófono apagado",
		LiveCamOff:  "LIVE: micrófono encendido, cámara cerrada",
		Private:     "Privado: nada sale de la sala",
		Joining:     "Conectando…",
		Leaving:     "Terminando la llamada…",
		Fault:       "El equipo tiene una avería",
		WhatToDo:    "Qué hacer",
		CameraShut:  "Cámara cerrada",
		Ready:       "Listo",
		Faulty:      "Avería",
		Shutter:     map[string]string{"closed": "tapa de la cámara cerrada", "open": "tapa de la cámara abierta", "opening": "tapa de la cámara abriéndose", "closing": "tapa de la cámara cerrándose", "unconfirmed": "tapa de la cámara sin confirmar"},
		FarPeople:   "%d al otro lado",
		TodoShutter: "La tapa de la cámara no se movió como debía. Compruebe que nada la bloquea. El equipo sigue en avería (la luz parpadea en rojo rápido) hasta que desaparezca la causa; si continúa, llame al servicio técnico y diga «avería de la tapa».",
		TodoDevice:  "La cámara o el micrófono ha dejado de funcionar. Compruebe que el cable está conectado y pulse JOIN de nuevo. Si vuelve a ocurrir, llame al servicio técnico.",
		TodoNetwork: "No se pudo conectar con el servicio de vídeo. Compruebe que el cable de red está conectado, espere un minuto y pulse JOIN de nuevo. Si sigue fallando, llame al servicio técnico.",
		TodoOther:   "Llame al servicio técnico y cuente lo que muestra esta pantalla.",
	},
	"nb": {
		E2EE:        "Ende-til-ende-kryptert · sikkerhetskode %s",
		TodoE2EE:    "Samtalen kunne ikke krypteres ende til ende, så den ble ikke startet, og ingenting forlot rommet. Trykk JOIN igjen; skjer det igjen, ring teknisk støtte og si «ende-til-ende-kryptering».",
		NextAt:      "Neste konsultasjon kl. %s",
		DueAt:       "Konsultasjon kl. %s: trykk JOIN for å starte",
		NothingDue:  "Ingen konsultasjon nå",
		Restarting:  "Enheten starter på nytt for å fullføre en oppdatering: trykk JOIN igjen om et par minutter",
		Notice:      "I dette rommet står en enhet for videokonsultasjon. Kameraet og mikrofonen er bare på mens denne skjermen viser LIVE. Ingenting tas opp: verken bilde eller lyd blir lagret.",
		PressJoin:   "Trykk JOIN for å starte",
		Live:        "LIVE: kamera og mikrofon på",
		LiveMicOff:  "LIVE: kamera på, mikrofon av",
		LiveCamOff:  "LIVE: mikrofon på, kamera lukket",
		Private:     "Privat: ingenting forlater rommet",
		Joining:     "Kobler til …",
		Leaving:     "Avslutter samtalen …",
		Fault:       "Enheten har en feil",
		WhatToDo:    "Hva du gjør",
		CameraShut:  "Kamera lukket",
		Ready:       "Klar",
		Faulty:      "Feil",
		Shutter:     map[string]string{"closed": "kameralokket lukket", "open": "kameralokket åpent", "opening": "kameralokket åpnes", "closing": "kameralokket lukkes", "unconfirmed": "kameralokket ikke bekreftet"},
		FarPeople:   "%d på den andre siden",
		TodoShutter: "Kameralokket beveget seg ikke som det skulle. Sjekk at ingenting blokkerer det. Enheten blir stående i feil (lampen blinker raskt rødt) til årsaken er borte; hvis det ikke går over, ring teknisk støtte og si «feil på kameralokket».",
		TodoDevice:  "Kameraet eller mikrofonen sluttet å virke. Sjekk at kabelen står i, og trykk JOIN igjen. Skjer det igjen, ring teknisk støtte.",
		TodoNetwork: "Fikk ikke kontakt med videotjenesten. Sjekk at nettverkskabelen står i, vent et minutt og trykk JOIN igjen. Hvis det fortsatt ikke virker, ring teknisk støtte.",
		TodoOther:   "Ring teknisk støtte og fortell hva denne skjermen viser.",
	},
}

// textsFor is lang's texts, or the default language's.
func textsFor(lang string) (string, texts) {
	lang = strings.ToLower(strings.TrimSpace(lang))
	if t, ok := allTexts[lang]; ok {
		return lang, t
	}
	return DefaultLanguage, allTexts[DefaultLanguage]
}

// todoFor is what to do about a fault, from its reason (the appliance's
// words, as doctor shows them).
func todoFor(t texts, reason string) string {
	r := strings.ToLower(reason)
	switch {
	case strings.Contains(r, "end-to-end"):
		return t.TodoE2EE
	case strings.Contains(r, "shutter") || strings.Contains(r, "sensor"):
		return t.TodoShutter
	case strings.Contains(r, "camera") || strings.Contains(r, "microphone") || strings.Contains(r, "device"):
		return t.TodoDevice
	case strings.Contains(r, "join") || strings.Contains(r, "conference") || strings.Contains(r, "server") || strings.Contains(r, "ice") || strings.Contains(r, "network"):
		return t.TodoNetwork
	}
	return t.TodoOther
}
