"""Speech for transcription and captions tests: espeak-ng voices, sentences, a speaker."""

from __future__ import annotations

from callsctl_sfu.client.participant import Participant
from callsctl_sfu.client.speech import SpeechTrack

ALICE_VOICE, BOB_VOICE = "en-us+f2", "en-us+f5"


ALICE_1 = "we need more time to finish the project"


BOB_1 = "the customer wants a new feature"


async def speaker(server, call: str, user: str) -> tuple[Participant, SpeechTrack]:
    track = SpeechTrack()
    person = Participant(server.ws_url, server.token(call, user), call, user.title(),
                         audio_track=track)
    try:
        await person.join()
        await person.wait_connected(15)
    except BaseException:
        await person.close()
        raise
    return person, track
