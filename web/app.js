// TeachBack web client: the API client (device login, token refresh), the UI language, a hash
// router and the views. The live lecture itself (microphone, WebSocket, resume) is in
// recorder.js. Every server string reaches the page through textContent, never as markup.

import { LiveSession, Microphone } from '/recorder.js';

// ==== UI language ===============================================================================

const LANG_KEY = 'teachback.lang';

const STRINGS = {
  en: {
    'app.name': 'TeachBack',
    'nav.home': 'Home',
    'nav.rankings': 'Rankings',
    'nav.me': 'My page',
    'nav.label': 'Main',
    'lang.toggle': '한국어',
    'lang.toggleLabel': 'Switch the language to Korean',
    'lang.ko': 'Korean',
    'lang.en': 'English',
    'common.loading': 'Loading…',
    'common.retry': 'Try again',
    'common.dismiss': 'Dismiss',
    'common.none': 'None',
    'common.dash': '—',
    'error.generic': 'Something went wrong. Please try again.',
    'error.network': 'Cannot reach the server. Check your connection.',
    'error.notFound': 'This page does not exist.',
    'home.title': 'What will you teach today?',
    'home.intro': 'Pick a topic, explain it out loud as if to a friend, and get a score with feedback.',
    'home.recommended': 'Recommended for you',
    'home.recommendedEmpty': 'No recommendations yet: pick any topic below.',
    'home.recent': 'Your recent lectures',
    'home.recentEmpty': 'No lectures yet. Choose a topic below to give your first one.',
    'home.catalog': 'All topics',
    'home.catalogEmpty': 'The catalogue is empty.',
    'home.subjects': '{n} subjects',
    'home.topics': '{n} topics',
    'reason.retry': 'Your best score is {score}: try again',
    'reason.co_study': 'Learners who taught {topic} also taught this',
    'reason.next_in_subject': 'Next in a subject you started',
    'reason.popular': 'Popular with learners',
    'status.recording': 'Recording',
    'status.paused': 'Paused',
    'status.finished': 'Finished',
    'status.cancelled': 'Cancelled',
    'status.abandoned': 'Abandoned',
    'processing.none': 'Not processed',
    'processing.transcribing': 'Transcribing',
    'processing.awaiting_transcription': 'Awaiting transcription',
    'processing.transcript_empty': 'No speech recognised',
    'processing.grading': 'Grading',
    'processing.graded': 'Graded',
    'processing.failed': 'Failed',
    'mode.live': 'Spoken',
    'mode.upload': 'Uploaded',
    'mode.text': 'Typed',
    'topic.keyConcepts': 'Key concepts',
    'topic.stats': '{learners} learners · {lectures} lectures · average score {average}',
    'topic.statsNoGrade': '{learners} learners · {lectures} lectures · not graded yet',
    'topic.teach': 'Teach this topic',
    'topic.teachHint': 'Explain it in your own words, as if to someone hearing it for the first time.',
    'topic.language': 'Lecture language',
    'topic.record': 'Start recording',
    'topic.orType': 'Or type your explanation',
    'topic.textLabel': 'Your explanation',
    'topic.textPlaceholder': 'Explain the topic in your own words…',
    'topic.textSubmit': 'Submit for grading',
    'topic.textEmpty': 'Write your explanation first.',
    'topic.noStt': 'Speech-to-text is not set up on this server yet: recordings are kept and graded once it is. Type your explanation to get a grade now.',
    'topic.maxLength': 'Up to {min} minutes.',
    'mic.denied': 'Microphone access was refused. Allow it in your browser settings, or type your explanation instead.',
    'mic.unavailable': 'No microphone is available. You can type your explanation instead.',
    'mic.waiting': 'Waiting for the microphone…',
    'conn.connecting': 'Connecting…',
    'conn.open': 'Connected',
    'conn.reconnecting': 'Reconnecting…',
    'conn.closed': 'Offline',
    'state.starting': 'Starting…',
    'state.recording': 'Recording',
    'state.paused': 'Paused',
    'state.finished': 'Finished',
    'state.cancelled': 'Cancelled',
    'state.abandoned': 'Abandoned',
    'live.level': 'Microphone level',
    'live.timer': 'Recorded time',
    'live.pause': 'Pause',
    'live.resume': 'Resume',
    'live.finish': 'Finish',
    'live.cancel': 'Cancel',
    'live.transcript': 'Live transcript',
    'live.transcriptEmpty': 'What you say appears here.',
    'live.feedback': 'Feedback',
    'live.feedbackEmpty': 'Feedback appears here once grading starts.',
    'live.finishing': 'Saving the last of your recording…',
    'live.processing': 'Finished. Transcribing and grading…',
    'live.sending': 'Sending your explanation…',
    'live.maxDuration': 'You reached the {min}-minute limit, so the lecture was finished.',
    'live.cancelled': 'The lecture was cancelled.',
    'live.abandoned': 'The lecture was abandoned after the connection was lost for too long.',
    'live.connectionLost': 'The connection was lost for too long. Everything the server acknowledged is saved.',
    'live.nothingRecognised': 'Nothing was recognised in the recording, so it was not graded.',
    'live.awaiting': 'Your recording is saved. It will be transcribed and graded once speech-to-text is set up on the server.',
    'live.gradingFailed': 'Grading failed for now: {message}',
    'live.regrading': 'The lecture is being graded again…',
    'live.ended': 'Processing stopped here: {state}.',
    'live.viewLecture': 'Open the lecture',
    'live.again': 'Teach again',
    'grader.llm': 'Graded by the language model',
    'grader.rubric': 'Graded by the built-in rubric',
    'grader.fallback': 'The language model failed ({reason}), so the built-in rubric grades instead.',
    'grader.gradingLlm': 'The language model is grading…',
    'grader.gradingRubric': 'The built-in rubric is grading…',
    'result.title': 'Lecture result',
    'result.score': 'Score',
    'result.outOf': '/ 100',
    'result.sub.accuracy': 'Accuracy',
    'result.sub.completeness': 'Completeness',
    'result.sub.clarity': 'Clarity',
    'result.sub.structure': 'Structure',
    'result.feedback': 'Feedback',
    'result.strengths': 'Strengths',
    'result.improvements': 'To improve',
    'result.misconceptions': 'Misconceptions',
    'result.transcript': 'Transcript',
    'result.noTranscript': 'No transcript yet.',
    'result.rate': 'Was this feedback helpful?',
    'result.rateN': '{n} of 5',
    'result.rated': 'Thanks! You rated this feedback {n} of 5.',
    'result.share': 'Share',
    'result.shareLabel': 'Share link',
    'result.copy': 'Copy',
    'result.copied': 'Copied',
    'result.shareHint': 'Anyone with this link can watch this lecture until {time}.',
    'result.teachAgain': 'Teach this topic again',
    'result.following': 'This lecture is still being processed; it updates here live.',
    'result.failed': 'Processing failed: {message}',
    'result.meta': '{date} · {mode} · {language}',
    'watch.title': 'Watching a lecture',
    'watch.transcript': 'Transcript',
    'watch.feedback': 'Feedback',
    'watch.ended': 'The lecture has no more updates.',
    'watch.waiting': 'Following the lecture live…',
    'me.title': 'My page',
    'me.graded': 'Graded lectures',
    'me.average': 'Average score',
    'me.best': 'Best score',
    'me.speaking': 'Speaking time',
    'me.streak': 'Current streak',
    'me.longest': 'Longest streak',
    'me.days': '{n} days',
    'me.day': '{n} day',
    'me.trend': 'Score trend',
    'me.trendLabel': 'Your last {n} scores, oldest first',
    'me.trendEmpty': 'Your scores appear here once a lecture is graded.',
    'me.subjects': 'By subject',
    'me.subject': 'Subject',
    'me.subjectsEmpty': 'No graded lectures yet.',
    'me.history': 'History',
    'me.historyEmpty': 'No lectures yet.',
    'me.loadMore': 'Load more',
    'me.rename': 'Your name',
    'me.renameLabel': 'Name shown in rankings',
    'me.renameSubmit': 'Save',
    'me.renamed': 'Name saved.',
    'nudges.title': 'Study reminders',
    'nudges.intro': 'Choose the nudges that help you keep teaching.',
    'nudges.daily': 'Daily reminder',
    'nudges.dailyHint': 'A topic to teach each evening, unless you already finished a lecture that day.',
    'nudges.streak': 'Streak warning',
    'nudges.streakHint': 'A warning in the evening when your streak ends unless you teach today.',
    'nudges.weekly': 'Weekly ranking digest',
    'nudges.weeklyHint': 'Every Monday morning: your rank and points of the week before.',
    'nudges.timeZone': 'Time zone',
    'nudges.hour': 'Time of the daily reminder',
    'nudges.hourDefault': 'Default (set by the server)',
    'nudges.quiet': 'Quiet hours',
    'nudges.quietEnable': 'Hold reminders back during these hours',
    'nudges.quietStart': 'From',
    'nudges.quietEnd': 'Until',
    'nudges.language': 'Language of the reminders',
    'nudges.save': 'Save reminders',
    'nudges.saved': 'Reminder settings saved.',
    'nudges.off': 'This server does not send reminders yet. Your preferences are still saved.',
    'nudges.quietSame': 'Quiet hours must start and end at different hours.',
    'nudges.timeZoneEmpty': 'Choose a time zone.',
    'nudges.loadFailed': 'Your reminder settings could not be loaded: {message}',
    'me.colGraded': 'Graded',
    'me.colAverage': 'Average',
    'me.colBest': 'Best',
    'duration.hm': '{h} h {m} min',
    'duration.ms': '{m} min {s} s',
    'rank.title': 'Rankings',
    'rank.intro': 'Points are the sum of your best score on each topic taught in the period.',
    'rank.period': 'Period',
    'rank.week': 'This week',
    'rank.month': 'Last 30 days',
    'rank.all': 'All time',
    'rank.scope': 'Scope',
    'rank.overall': 'Overall',
    'rank.rank': 'Rank',
    'rank.name': 'Learner',
    'rank.points': 'Points',
    'rank.topics': 'Topics',
    'rank.you': 'you',
    'rank.mine': 'Rank {rank} of {total} · {points} points · top {percentile}%',
    'rank.empty': 'No one is ranked in this period yet. Be the first!',
    'live.status.connecting': 'Connecting to live updates…',
    'live.status.open': 'Live',
    'live.status.closed': 'Live updates paused',
    // Refusals by code (the server's `error.code`, live error frames, `fallbackReason`).
    'live.cancelling': 'Cancelling…',
    'error.http': 'The server refused the request (HTTP {status}).',
    'err.network': 'Cannot reach the server. Check your connection.',
    'err.too_many_live_lectures': 'You already have a lecture in progress (perhaps in another tab). Finish or cancel it first.',
    'err.rate_limited': 'Too many attempts in a short time. Please wait a little and try again.',
    'err.quota_exceeded': 'You have used today\'s allowance. You can start again after midnight.',
    'err.no_audio': 'Nothing was recorded, so the lecture was cancelled.',
    'err.lecture_paused': 'The lecture is paused.',
    'err.lecture_finished': 'The lecture has already ended.',
    'err.lecture_ended': 'The lecture has already ended.',
    'err.lecture_not_live': 'The lecture is no longer running on the server.',
    'err.lecture_in_progress': 'A lecture is already in progress on this connection.',
    'err.storage_unavailable': 'The server cannot store recordings right now. Your audio is kept; retrying…',
    'err.superseded': 'This lecture was continued in another tab or on another device.',
    'err.too_slow': 'The connection was too slow and was reset.',
    'err.recording_too_large': 'The recording reached its size limit, so the lecture was finished.',
    'err.internal': 'The server ran into a problem. Please try again.',
    'err.unknown_topic': 'This topic does not exist.',
    'err.topic_not_found': 'This topic does not exist.',
    'err.unsupported_format': 'This audio format is not supported.',
    'err.invalid_language': 'This lecture language is not supported.',
    'err.invalid_text': 'The explanation must have 1 to 20,000 characters.',
    'err.invalid_name': 'That name cannot be used. A name has 2 to 20 characters, without control or invisible characters.',
    'err.name_taken': 'That name is already taken.',
    'err.missing_token': 'You are not signed in. Reload the page.',
    'err.invalid_token': 'Your session is not valid. Reload the page.',
    'err.token_expired': 'Your session expired. Reload the page.',
    'err.invalid_device_token': 'This device is not registered any more. Reload the page.',
    'err.user_not_found': 'Your account was not found. Reload the page.',
    'err.lecture_not_found': 'This lecture does not exist.',
    'err.not_found': 'Not found.',
    'err.invalid_share_token': 'This share link is not valid.',
    'err.share_token_expired': 'This share link has expired.',
    'err.not_graded': 'This lecture has no grade yet.',
    'err.invalid_rating': 'A rating is a whole number from 1 to 5.',
    'err.concurrent_update': 'Something changed at the same time. Please try again.',
    'err.payload_too_large': 'That is too large for the server.',
    'err.too_many_subscribers': 'Too many people are following live right now. Retrying soon.',
    'err.provider_unreachable': 'the service could not be reached',
    'err.provider_timeout': 'the service took too long to answer',
    'err.provider_rate_limited': 'the service is receiving too many requests',
    'err.rate_limited': 'the service is receiving too many requests',
    'err.provider_quota_exceeded': 'the service’s usage quota is used up',
    'err.insufficient_quota': 'the service’s usage quota is used up',
    'err.provider_rejected': 'the service refused the request',
    'err.provider_error': 'the service had an error',
    'err.provider_stream_broken': 'the service’s answer was cut off',
    'err.provider_invalid_response': 'the service gave an answer that could not be read',
    'err.provider_circuit_open': 'the service failed repeatedly and is paused for a moment',
    'err.invalid_output': 'the model’s answer was not a valid grade',
    'err.audio_unavailable': 'the recording could not be read',
  },
  ko: {
    'app.name': 'TeachBack',
    'nav.home': '홈',
    'nav.rankings': '랭킹',
    'nav.me': '내 페이지',
    'nav.label': '주 메뉴',
    'lang.toggle': 'English',
    'lang.toggleLabel': '언어를 영어로 바꾸기',
    'lang.ko': '한국어',
    'lang.en': '영어',
    'common.loading': '불러오는 중…',
    'common.retry': '다시 시도',
    'common.dismiss': '닫기',
    'common.none': '없음',
    'common.dash': '—',
    'error.generic': '문제가 생겼습니다. 다시 시도해 주세요.',
    'error.network': '서버에 연결할 수 없습니다. 네트워크를 확인해 주세요.',
    'error.notFound': '없는 페이지입니다.',
    'home.title': '오늘은 무엇을 가르쳐 볼까요?',
    'home.intro': '주제를 골라 친구에게 설명하듯 소리 내어 풀어 보세요. 점수와 피드백을 받을 수 있어요.',
    'home.recommended': '추천 주제',
    'home.recommendedEmpty': '아직 추천할 주제가 없습니다. 아래에서 아무 주제나 골라 보세요.',
    'home.recent': '최근 강의',
    'home.recentEmpty': '아직 강의가 없습니다. 아래에서 주제를 골라 첫 강의를 해 보세요.',
    'home.catalog': '전체 주제',
    'home.catalogEmpty': '주제 목록이 비어 있습니다.',
    'home.subjects': '과목 {n}개',
    'home.topics': '주제 {n}개',
    'reason.retry': '최고 점수 {score}점: 다시 도전해 보세요',
    'reason.co_study': '{topic}을(를) 가르친 학습자들이 함께 가르친 주제',
    'reason.next_in_subject': '시작한 과목의 다음 주제',
    'reason.popular': '학습자들에게 인기 있는 주제',
    'status.recording': '녹음 중',
    'status.paused': '일시 정지',
    'status.finished': '완료',
    'status.cancelled': '취소됨',
    'status.abandoned': '중단됨',
    'processing.none': '처리 전',
    'processing.transcribing': '받아쓰는 중',
    'processing.awaiting_transcription': '받아쓰기 대기 중',
    'processing.transcript_empty': '인식된 음성 없음',
    'processing.grading': '채점 중',
    'processing.graded': '채점 완료',
    'processing.failed': '실패',
    'mode.live': '말하기',
    'mode.upload': '업로드',
    'mode.text': '글쓰기',
    'topic.keyConcepts': '핵심 개념',
    'topic.stats': '학습자 {learners}명 · 강의 {lectures}회 · 평균 {average}점',
    'topic.statsNoGrade': '학습자 {learners}명 · 강의 {lectures}회 · 아직 채점 없음',
    'topic.teach': '이 주제 가르치기',
    'topic.teachHint': '처음 듣는 사람에게 설명하듯 자신의 말로 풀어 보세요.',
    'topic.language': '강의 언어',
    'topic.record': '녹음 시작',
    'topic.orType': '또는 글로 설명하기',
    'topic.textLabel': '나의 설명',
    'topic.textPlaceholder': '자신의 말로 주제를 설명해 보세요…',
    'topic.textSubmit': '채점 받기',
    'topic.textEmpty': '먼저 설명을 입력해 주세요.',
    'topic.noStt': '이 서버에는 아직 음성 인식이 설정되지 않았습니다. 녹음은 보관되었다가 설정되면 채점됩니다. 글로 설명하면 바로 채점받을 수 있습니다.',
    'topic.maxLength': '최대 {min}분까지 녹음할 수 있습니다.',
    'mic.denied': '마이크 사용이 거부되었습니다. 브라우저 설정에서 허용하거나 글로 설명해 주세요.',
    'mic.unavailable': '사용할 수 있는 마이크가 없습니다. 글로 설명할 수도 있습니다.',
    'mic.waiting': '마이크를 기다리는 중…',
    'conn.connecting': '연결 중…',
    'conn.open': '연결됨',
    'conn.reconnecting': '다시 연결하는 중…',
    'conn.closed': '연결 끊김',
    'state.starting': '시작하는 중…',
    'state.recording': '녹음 중',
    'state.paused': '일시 정지',
    'state.finished': '완료',
    'state.cancelled': '취소됨',
    'state.abandoned': '중단됨',
    'live.level': '마이크 음량',
    'live.timer': '녹음 시간',
    'live.pause': '일시 정지',
    'live.resume': '계속하기',
    'live.finish': '마치기',
    'live.cancel': '취소',
    'live.transcript': '실시간 받아쓰기',
    'live.transcriptEmpty': '말한 내용이 여기에 나타납니다.',
    'live.feedback': '피드백',
    'live.feedbackEmpty': '채점이 시작되면 피드백이 여기에 나타납니다.',
    'live.finishing': '녹음의 마지막 부분을 저장하는 중…',
    'live.processing': '완료했습니다. 받아쓰고 채점하는 중…',
    'live.sending': '설명을 보내는 중…',
    'live.maxDuration': '{min}분 제한에 도달해 강의가 종료되었습니다.',
    'live.cancelled': '강의가 취소되었습니다.',
    'live.abandoned': '연결이 너무 오래 끊겨 강의가 중단되었습니다.',
    'live.connectionLost': '연결이 너무 오래 끊겼습니다. 서버가 확인한 부분은 모두 저장되었습니다.',
    'live.nothingRecognised': '녹음에서 인식된 말이 없어 채점하지 않았습니다.',
    'live.awaiting': '녹음이 저장되었습니다. 서버에 음성 인식이 설정되면 받아쓰고 채점합니다.',
    'live.gradingFailed': '지금은 채점하지 못했습니다: {message}',
    'live.regrading': '다시 채점하는 중…',
    'live.ended': '처리가 여기서 멈췄습니다: {state}.',
    'live.viewLecture': '강의 열기',
    'live.again': '다시 가르치기',
    'grader.llm': '언어 모델이 채점했습니다',
    'grader.rubric': '기본 채점 기준표로 채점했습니다',
    'grader.fallback': '언어 모델이 실패하여({reason}) 기본 채점 기준표로 대신 채점합니다.',
    'grader.gradingLlm': '언어 모델이 채점하는 중…',
    'grader.gradingRubric': '기본 채점 기준표로 채점하는 중…',
    'result.title': '강의 결과',
    'result.score': '점수',
    'result.outOf': '/ 100',
    'result.sub.accuracy': '정확성',
    'result.sub.completeness': '완전성',
    'result.sub.clarity': '명료성',
    'result.sub.structure': '구성',
    'result.feedback': '피드백',
    'result.strengths': '잘한 점',
    'result.improvements': '개선할 점',
    'result.misconceptions': '잘못 이해한 점',
    'result.transcript': '받아쓴 내용',
    'result.noTranscript': '아직 받아쓴 내용이 없습니다.',
    'result.rate': '이 피드백이 도움이 되었나요?',
    'result.rateN': '5점 중 {n}점',
    'result.rated': '고맙습니다! 이 피드백을 5점 중 {n}점으로 평가했습니다.',
    'result.share': '공유',
    'result.shareLabel': '공유 링크',
    'result.copy': '복사',
    'result.copied': '복사됨',
    'result.shareHint': '이 링크가 있으면 누구나 {time}까지 이 강의를 볼 수 있습니다.',
    'result.teachAgain': '이 주제 다시 가르치기',
    'result.following': '이 강의는 아직 처리 중입니다. 진행 상황이 여기에 실시간으로 나타납니다.',
    'result.failed': '처리에 실패했습니다: {message}',
    'result.meta': '{date} · {mode} · {language}',
    'watch.title': '강의 지켜보기',
    'watch.transcript': '받아쓴 내용',
    'watch.feedback': '피드백',
    'watch.ended': '이 강의에는 더 이상 새 소식이 없습니다.',
    'watch.waiting': '강의를 실시간으로 따라가는 중…',
    'me.title': '내 페이지',
    'me.graded': '채점된 강의',
    'me.average': '평균 점수',
    'me.best': '최고 점수',
    'me.speaking': '말한 시간',
    'me.streak': '현재 연속 학습',
    'me.longest': '최장 연속 학습',
    'me.days': '{n}일',
    'me.day': '{n}일',
    'me.trend': '점수 추이',
    'me.trendLabel': '최근 점수 {n}개, 오래된 것부터',
    'me.trendEmpty': '강의가 채점되면 점수가 여기에 나타납니다.',
    'me.subjects': '과목별',
    'me.subject': '과목',
    'me.subjectsEmpty': '아직 채점된 강의가 없습니다.',
    'me.history': '기록',
    'me.historyEmpty': '아직 강의가 없습니다.',
    'me.loadMore': '더 보기',
    'me.rename': '내 이름',
    'me.renameLabel': '랭킹에 보이는 이름',
    'me.renameSubmit': '저장',
    'me.renamed': '이름을 저장했습니다.',
    'nudges.title': '학습 알림',
    'nudges.intro': '꾸준히 가르치며 공부하도록 도와줄 알림을 고르세요.',
    'nudges.daily': '매일 알림',
    'nudges.dailyHint': '그날 아직 강의를 마치지 않았다면 저녁에 가르칠 주제를 알려 드립니다.',
    'nudges.streak': '연속 학습 경고',
    'nudges.streakHint': '오늘 가르치지 않으면 연속 학습이 끊길 때 저녁에 알려 드립니다.',
    'nudges.weekly': '주간 랭킹 요약',
    'nudges.weeklyHint': '매주 월요일 아침, 지난주 순위와 점수를 알려 드립니다.',
    'nudges.timeZone': '시간대',
    'nudges.hour': '매일 알림 시각',
    'nudges.hourDefault': '기본값 (서버 설정 시각)',
    'nudges.quiet': '방해 금지 시간',
    'nudges.quietEnable': '이 시간에는 알림을 미루기',
    'nudges.quietStart': '시작',
    'nudges.quietEnd': '종료',
    'nudges.language': '알림 언어',
    'nudges.save': '알림 설정 저장',
    'nudges.saved': '알림 설정을 저장했습니다.',
    'nudges.off': '이 서버는 아직 알림을 보내지 않습니다. 설정은 그대로 저장됩니다.',
    'nudges.quietSame': '방해 금지 시간의 시작과 종료 시각은 달라야 합니다.',
    'nudges.timeZoneEmpty': '시간대를 고르세요.',
    'nudges.loadFailed': '알림 설정을 불러오지 못했습니다: {message}',
    'me.colGraded': '채점',
    'me.colAverage': '평균',
    'me.colBest': '최고',
    'duration.hm': '{h}시간 {m}분',
    'duration.ms': '{m}분 {s}초',
    'rank.title': '랭킹',
    'rank.intro': '점수는 기간 안에 가르친 주제마다 가장 높은 점수를 더한 값입니다.',
    'rank.period': '기간',
    'rank.week': '이번 주',
    'rank.month': '최근 30일',
    'rank.all': '전체 기간',
    'rank.scope': '범위',
    'rank.overall': '전체',
    'rank.rank': '순위',
    'rank.name': '학습자',
    'rank.points': '점수',
    'rank.topics': '주제',
    'rank.you': '나',
    'rank.mine': '{total}명 중 {rank}위 · {points}점 · 상위 {percentile}%',
    'rank.empty': '이 기간에는 아직 순위에 든 학습자가 없습니다. 첫 번째가 되어 보세요!',
    'live.status.connecting': '실시간 업데이트 연결 중…',
    'live.status.open': '실시간',
    'live.status.closed': '실시간 업데이트 멈춤',
    // Refusals by code (the server's `error.code`, live error frames, `fallbackReason`).
    'live.cancelling': '취소하는 중…',
    'error.http': '서버가 요청을 거부했습니다 (HTTP {status}).',
    'err.network': '서버에 연결할 수 없습니다. 네트워크를 확인해 주세요.',
    'err.too_many_live_lectures': '이미 진행 중인 강의가 있습니다(다른 탭일 수 있습니다). 먼저 마치거나 취소해 주세요.',
    'err.rate_limited': '짧은 시간에 너무 많이 시도했어요. 잠시 후 다시 시도해 주세요.',
    'err.quota_exceeded': '오늘 사용할 수 있는 한도를 모두 사용했어요. 자정이 지나면 다시 시작할 수 있어요.',
    'err.no_audio': '녹음된 내용이 없어 강의를 취소했습니다.',
    'err.lecture_paused': '강의가 일시 정지되어 있습니다.',
    'err.lecture_finished': '강의가 이미 끝났습니다.',
    'err.lecture_ended': '강의가 이미 끝났습니다.',
    'err.lecture_not_live': '이 강의는 서버에서 더 이상 진행 중이 아닙니다.',
    'err.lecture_in_progress': '이 연결에서 이미 강의가 진행 중입니다.',
    'err.storage_unavailable': '지금은 서버가 녹음을 저장할 수 없습니다. 녹음은 보관되어 있으며 다시 시도하는 중입니다…',
    'err.superseded': '이 강의는 다른 탭이나 기기에서 이어서 진행되고 있습니다.',
    'err.too_slow': '연결이 너무 느려 다시 설정되었습니다.',
    'err.recording_too_large': '녹음이 최대 크기에 도달해 강의가 종료되었습니다.',
    'err.internal': '서버에 문제가 생겼습니다. 다시 시도해 주세요.',
    'err.unknown_topic': '없는 주제입니다.',
    'err.topic_not_found': '없는 주제입니다.',
    'err.unsupported_format': '지원하지 않는 오디오 형식입니다.',
    'err.invalid_language': '지원하지 않는 강의 언어입니다.',
    'err.invalid_text': '설명은 1자 이상 20,000자 이하여야 합니다.',
    'err.invalid_name': '사용할 수 없는 이름입니다. 이름은 2자 이상 20자 이하이며 제어 문자나 보이지 않는 문자를 포함할 수 없습니다.',
    'err.name_taken': '이미 사용 중인 이름입니다.',
    'err.missing_token': '로그인되어 있지 않습니다. 페이지를 새로 고쳐 주세요.',
    'err.invalid_token': '세션이 올바르지 않습니다. 페이지를 새로 고쳐 주세요.',
    'err.token_expired': '세션이 만료되었습니다. 페이지를 새로 고쳐 주세요.',
    'err.invalid_device_token': '이 기기는 더 이상 등록되어 있지 않습니다. 페이지를 새로 고쳐 주세요.',
    'err.user_not_found': '계정을 찾을 수 없습니다. 페이지를 새로 고쳐 주세요.',
    'err.lecture_not_found': '없는 강의입니다.',
    'err.not_found': '찾을 수 없습니다.',
    'err.invalid_share_token': '올바르지 않은 공유 링크입니다.',
    'err.share_token_expired': '공유 링크가 만료되었습니다.',
    'err.not_graded': '이 강의는 아직 채점되지 않았습니다.',
    'err.invalid_rating': '평가는 1부터 5까지의 정수여야 합니다.',
    'err.concurrent_update': '동시에 다른 변경이 있었습니다. 다시 시도해 주세요.',
    'err.payload_too_large': '서버가 받기에는 너무 큽니다.',
    'err.too_many_subscribers': '지금은 실시간으로 보는 사람이 너무 많습니다. 잠시 후 다시 시도합니다.',
    'err.provider_unreachable': '서비스에 연결할 수 없음',
    'err.provider_timeout': '서비스 응답 시간 초과',
    'err.provider_rate_limited': '서비스 요청 한도 초과',
    'err.rate_limited': '서비스 요청 한도 초과',
    'err.provider_quota_exceeded': '서비스 사용량 한도 소진',
    'err.insufficient_quota': '서비스 사용량 한도 소진',
    'err.provider_rejected': '서비스가 요청을 거부함',
    'err.provider_error': '서비스 오류',
    'err.provider_stream_broken': '서비스 응답이 중간에 끊김',
    'err.provider_invalid_response': '서비스 응답을 읽을 수 없음',
    'err.provider_circuit_open': '서비스가 계속 실패해 잠시 멈춤',
    'err.invalid_output': '모델의 답이 올바른 채점 결과가 아님',
    'err.audio_unavailable': '녹음을 읽을 수 없음',
  },
};

let lang = initialLang();

function initialLang() {
  const saved = localStorage.getItem(LANG_KEY);
  if (saved === 'ko' || saved === 'en') return saved;
  return (navigator.language || '').toLowerCase().startsWith('ko') ? 'ko' : 'en';
}

/**
 * The UI string `key` with `{name}` placeholders filled from `args`. An argument may be a
 * server refusal, `{err: code, message}`, shown with errorText() (so `relabel` translates it
 * again when the language changes).
 */
function t(key, args = {}) {
  const text = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => {
    const value = args[name];
    if (value && typeof value === 'object') return errorText(value.err, value.message);
    return value ?? '';
  });
}

/**
 * A server refusal (`code`, the server's English `message`) in the UI language: known codes
 * from the dictionary (`err.<code>`), else the server's own message.
 */
function errorText(code, message) {
  // The server's invalid_name says which rule the name broke (its length, say): keep that
  // detail in the English UI.
  if (code === 'invalid_name' && lang === 'en' && message) return message;
  // A quota refusal names the quota and when it comes back, already in the language the
  // request asked for (API calls send the UI language; a WebSocket upgrade, the browser's).
  if (code === 'quota_exceeded' && message && /[가-힣]/.test(message) === (lang === 'ko')) return message;
  if (code && STRINGS.en[`err.${code}`]) return t(`err.${code}`);
  // A plain-text body (a framework's refusal, in English): a sentence with its status instead.
  if (code && code.startsWith('http_') && (lang !== 'en' || !message)) return t('error.http', { status: code.slice(5) });
  return message || t('error.generic');
}

/** An error (ApiError, live refusal {code, message}, or Error) as text for the learner. */
function errorMessage(err) {
  return errorText(err && err.code, err && err.message);
}

/** `n` days, singular for one. */
function days(n) {
  return t(n === 1 ? 'me.day' : 'me.days', { n });
}

/** A catalogue text ({en, ko}) in the UI language, else the other one. */
function pick(texts) {
  if (!texts) return '';
  return texts[lang] ?? texts[lang === 'ko' ? 'en' : 'ko'] ?? Object.values(texts)[0] ?? '';
}

function pickList(lists) {
  if (!lists) return [];
  return lists[lang] ?? lists[lang === 'ko' ? 'en' : 'ko'] ?? Object.values(lists)[0] ?? [];
}

// Re-translates the elements built with `i18n` (used where a view cannot be rebuilt, such as
// during a recording).
function relabel(root = document) {
  for (const el of root.querySelectorAll('[data-i18n]')) {
    el.textContent = t(el.dataset.i18n, el.dataset.i18nArgs ? JSON.parse(el.dataset.i18nArgs) : {});
  }
  for (const el of root.querySelectorAll('[data-i18n-label]')) {
    el.setAttribute('aria-label', t(el.dataset.i18nLabel));
  }
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) {
    el.setAttribute(el.tagName === 'TEXTAREA' || el.tagName === 'INPUT' ? 'placeholder' : 'data-placeholder', t(el.dataset.i18nPlaceholder));
  }
}

// ==== DOM helpers ===============================================================================

/**
 * Builds an element. Props: `class`, `text`, `testid`, `dataset`, `i18n` (a string key, with
 * `args`), `label` (an aria-label key), `placeholder` (a key), `on*` listeners, `value`, and
 * other attributes as strings (`true` for a bare attribute, null/false to leave out).
 */
function h(tag, props = {}, ...children) {
  const svg = ['svg', 'polyline', 'circle', 'line', 'text', 'title', 'g'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false || key === 'value' || key === 'args') continue;
    if (key === 'class') el.setAttribute('class', value);
    else if (key === 'text') el.textContent = value;
    else if (key === 'testid') el.dataset.testid = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'i18n') setText(el, value, props.args);
    else if (key === 'label') {
      el.dataset.i18nLabel = value;
      el.setAttribute('aria-label', t(value));
    } else if (key === 'placeholder') {
      el.dataset.i18nPlaceholder = value;
      el.setAttribute(tag === 'textarea' || tag === 'input' ? 'placeholder' : 'data-placeholder', t(value));
    } else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  if (props.value != null) el.value = props.value;
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Sets a translated text that `relabel` keeps up to date. */
function setText(el, key, args) {
  el.dataset.i18n = key;
  if (args) el.dataset.i18nArgs = JSON.stringify(args);
  else delete el.dataset.i18nArgs;
  el.textContent = t(key, args);
}

function loading() {
  return h('p', { class: 'loading', role: 'status', i18n: 'common.loading' });
}

function empty(key) {
  return h('p', { class: 'empty', i18n: key });
}

let toastTimer = null;

/** Shows an error (translated by its code, else the server's message) in the toast. */
function showError(err) {
  if (err && err.name === 'AbortError') return;
  const message = errorMessage(err);
  const toast = document.getElementById('toast');
  toast.querySelector('.toast-text').textContent = message;
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (toast.hidden = true), 8000);
}

function fmtClock(seconds) {
  const s = Math.floor(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

function fmtDate(iso) {
  if (!iso) return '';
  return new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(iso));
}

function fmtNumber(n, digits = 1) {
  if (n == null) return t('common.dash');
  return new Intl.NumberFormat(lang, { maximumFractionDigits: digits }).format(n);
}

function fmtDuration(seconds) {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return h > 0 ? t('duration.hm', { h, m }) : t('duration.ms', { m, s: seconds % 60 });
}

function languageName(code) {
  return code === 'ko' || code === 'en' ? t(`lang.${code}`) : code;
}

// ==== API client ================================================================================

const DEVICE_KEY = 'teachback.device';
const REFRESH_MARGIN_MS = 30000;

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let device = loadDevice();
let authInFlight = null;

function loadDevice() {
  try {
    const stored = JSON.parse(localStorage.getItem(DEVICE_KEY));
    return stored && stored.deviceToken ? stored : null;
  } catch {
    return null;
  }
}

function saveDevice(next) {
  device = next;
  localStorage.setItem(DEVICE_KEY, JSON.stringify(next));
  showUserName();
}

async function send(method, path, { body, token, signal } = {}) {
  const headers = { Accept: 'application/json', 'Accept-Language': lang };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  try {
    return await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network', t('error.network'));
  }
}

// The `{error: {code, message}}` of a refusal (or the plain text some framework errors have).
async function errorOf(res) {
  const text = await res.text().catch(() => '');
  try {
    const { error } = JSON.parse(text);
    if (error && error.code) return new ApiError(res.status, error.code, error.message || t('error.generic'));
  } catch {
    // Not JSON: fall through.
  }
  return new ApiError(res.status, `http_${res.status}`, text.trim() || t('error.generic'));
}

async function register() {
  const res = await send('POST', '/api/v1/devices', { body: { platform: 'web' } });
  if (!res.ok) throw await errorOf(res);
  const d = await res.json();
  saveDevice({
    userId: d.userId,
    name: d.name,
    deviceToken: d.deviceToken,
    accessToken: d.accessToken,
    accessTokenExpiresAt: d.accessTokenExpiresAt,
  });
}

async function refresh() {
  const res = await send('POST', '/api/v1/auth/refresh', { body: { deviceToken: device.deviceToken } });
  if (!res.ok) {
    const err = await errorOf(res);
    // The device is gone (a wiped server, say): start over as a new learner.
    if (err.code === 'invalid_device_token') return register();
    throw err;
  }
  const token = await res.json();
  saveDevice({ ...device, accessToken: token.accessToken, accessTokenExpiresAt: token.accessTokenExpiresAt });
}

// Runs one registration or refresh at a time; concurrent callers share it.
function authOnce(fn) {
  if (!authInFlight) authInFlight = fn().finally(() => (authInFlight = null));
  return authInFlight;
}

/** A valid access token, registering or refreshing first when needed. */
async function accessToken({ force = false } = {}) {
  if (authInFlight) await authInFlight.catch(() => {});
  if (!device) await authOnce(register);
  else if (force || Date.parse(device.accessTokenExpiresAt) - Date.now() < REFRESH_MARGIN_MS) await authOnce(refresh);
  return device.accessToken;
}

/**
 * Calls the API and answers the parsed JSON; throws ApiError. `auth: false` for public
 * endpoints. An expired or unknown token is renewed and the call repeated once.
 */
async function api(path, { method = 'GET', body, auth = true, signal } = {}) {
  for (let attempt = 0; ; attempt++) {
    const token = auth ? await accessToken() : null;
    const res = await send(method, path, { body, token, signal });
    if (res.ok) return res.status === 204 ? null : res.json();
    const err = await errorOf(res);
    if (auth && attempt === 0 && (err.code === 'token_expired' || err.code === 'invalid_token')) {
      await accessToken({ force: true });
      continue;
    }
    if (auth && attempt === 0 && err.code === 'user_not_found') {
      await authOnce(register);
      continue;
    }
    throw err;
  }
}

let catalogPromise = null;

/** The catalogue with lookups by id; cached, and fetched again when `fresh`. */
function getCatalog({ fresh = false } = {}) {
  if (!catalogPromise || fresh) {
    catalogPromise = api('/api/v1/catalog', { auth: false })
      .then(indexCatalog)
      .catch((err) => {
        catalogPromise = null;
        throw err;
      });
  }
  return catalogPromise;
}

function indexCatalog(catalog) {
  const majors = new Map();
  const subjects = new Map();
  const topics = new Map();
  for (const major of catalog.majors) {
    majors.set(major.id, major);
    for (const subject of major.subjects) {
      subjects.set(subject.id, { ...subject, major });
      for (const topic of subject.topics) topics.set(topic.topicId, { ...topic, subject, major });
    }
  }
  return { list: catalog.majors, majors, subjects, topics };
}

let infoPromise = null;

/** What the server can do ({speechToText, llmGrader, maxLectureSecs}), or null if unknown. */
function getInfo() {
  if (!infoPromise) infoPromise = api('/api/v1/info', { auth: false }).catch(() => null);
  return infoPromise;
}

// ==== Shell and router ==========================================================================

const app = document.getElementById('app');
let current = null; // {controller, cleanups, busy}
let activeSession = null; // the latest LiveSession, for the test hook (kept after it ends)

function showUserName() {
  const el = document.querySelector('[data-testid=user-name]');
  if (el) el.textContent = device ? device.name : '';
}

function applyLang() {
  document.documentElement.lang = lang;
  document.title = t('app.name');
  relabel();
}

function toggleLang() {
  lang = lang === 'ko' ? 'en' : 'ko';
  localStorage.setItem(LANG_KEY, lang);
  applyLang();
  // A view with something running (a recording) only relabels; the others are rebuilt.
  if (!(current && current.busy && current.busy())) route();
}

const ROUTES = [
  [/^\/$/, homeView],
  [/^\/topic\/([^/]+)$/, topicView],
  [/^\/lecture\/([^/]+)$/, lectureView],
  [/^\/watch\/([^/]+)$/, watchView],
  [/^\/me$/, meView],
  [/^\/rankings$/, rankingsView],
];

function teardown() {
  if (!current) return;
  current.controller.abort();
  for (const cleanup of current.cleanups) {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
  }
  current = null;
}

/** Renders the view of the current hash, after releasing everything the previous one held. */
function route() {
  teardown();
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, queryString = ''] = hash.split('?');
  const controller = new AbortController();
  const ctx = {
    controller,
    signal: controller.signal,
    query: new URLSearchParams(queryString),
    cleanups: [],
    busy: null,
    alive: () => !controller.signal.aborted,
    onCleanup(fn) {
      this.cleanups.push(fn);
    },
  };
  current = ctx;
  app.replaceChildren();
  updateNav(path);
  for (const [pattern, view] of ROUTES) {
    const match = pattern.exec(path);
    if (match) {
      const params = match.slice(1).map(decodeURIComponent);
      Promise.resolve(view(ctx, ...params)).catch((err) => viewFailed(ctx, err));
      return;
    }
  }
  app.append(h('h1', { i18n: 'error.notFound' }), h('p', {}, h('a', { href: '#/', i18n: 'nav.home' })));
}

function viewFailed(ctx, err) {
  if (!ctx.alive() || err.name === 'AbortError') return;
  showError(err);
  app.replaceChildren(
    h('p', { class: 'error-state', text: errorMessage(err) }),
    h('button', { type: 'button', class: 'button', i18n: 'common.retry', onclick: route }),
  );
}

function updateNav(path) {
  const section = path.startsWith('/rankings') ? 'rankings' : path.startsWith('/me') ? 'me' : path === '/' ? 'home' : '';
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function section(titleKey, ...children) {
  return h('section', { class: 'section' }, h('h2', { i18n: titleKey }), ...children);
}

// ==== Home ======================================================================================

async function homeView(ctx) {
  const recommended = h('div', { testid: 'recommended', class: 'cards' }, loading());
  const recent = h('div', { testid: 'recent' }, loading());
  const catalog = h('div', { testid: 'catalog', class: 'catalog' }, loading());
  app.append(
    h('h1', { i18n: 'home.title' }),
    h('p', { class: 'lead', i18n: 'home.intro' }),
    section('home.recommended', recommended),
    section('home.recent', recent),
    section('home.catalog', catalog),
  );
  const [home, index] = await Promise.allSettled([
    api('/api/v1/home', { signal: ctx.signal }),
    getCatalog({ fresh: true }),
  ]);
  if (!ctx.alive()) return;
  if (index.status === 'fulfilled') catalog.replaceChildren(catalogTree(index.value));
  else {
    catalog.replaceChildren(h('p', { class: 'error-state', text: errorMessage(index.reason) }));
    showError(index.reason);
  }
  const topics = index.status === 'fulfilled' ? index.value.topics : new Map();
  if (home.status === 'fulfilled') {
    recommended.replaceChildren(recommendations(home.value.recommended, topics));
    recent.replaceChildren(lectureList(home.value.recent, 'home.recentEmpty'));
  } else {
    recommended.replaceChildren();
    recent.replaceChildren();
    showError(home.reason);
  }
}

function recommendations(items, topics) {
  if (!items.length) return empty('home.recommendedEmpty');
  return h(
    'ul',
    { class: 'card-list' },
    items.map((item) => {
      const because = item.because && topics.get(item.because);
      const args = { score: item.bestScore ?? '', topic: because ? pick(because.title) : item.because || '' };
      return h(
        'li',
        {},
        h(
          'a',
          { class: 'card topic-card', href: `#/topic/${encodeURIComponent(item.topicId)}`, dataset: { topic: item.topicId } },
          h('strong', { class: 'card-title', text: pick(item.title) }),
          h('span', { class: 'reason', dataset: { reason: item.reason }, i18n: `reason.${item.reason}`, args }),
        ),
      );
    }),
  );
}

/** Lectures (history rows) linking to their pages. */
function lectureList(lectures, emptyKey) {
  if (!lectures.length) return empty(emptyKey);
  return h('ul', { class: 'lecture-list' }, lectures.map(lectureRow));
}

function lectureRow(lecture) {
  const statusKey = lecture.status === 'finished' && lecture.processing !== 'none'
    ? `processing.${lecture.processing}`
    : `status.${lecture.status}`;
  return h(
    'li',
    { dataset: { lectureId: lecture.lectureId } },
    h(
      'a',
      { class: 'lecture-row', href: `#/lecture/${encodeURIComponent(lecture.lectureId)}` },
      h('span', { class: 'lecture-title', text: lecture.topicTitle || lecture.topicId }),
      h('span', { class: `badge badge-${lecture.processing}`, i18n: statusKey }),
      h('span', { class: 'lecture-score', text: lecture.score == null ? t('common.dash') : String(lecture.score) }),
      h('time', { class: 'lecture-date', datetime: lecture.startedAt, text: fmtDate(lecture.startedAt) }),
    ),
  );
}

function catalogTree(index) {
  if (!index.list.length) return empty('home.catalogEmpty');
  return h(
    'div',
    { class: 'tree' },
    index.list.map((major) =>
      h(
        'details',
        { class: 'major', dataset: { major: major.id } },
        h(
          'summary',
          {},
          h('span', { class: 'summary-title', text: pick(major.name) }),
          h('span', { class: 'count', i18n: 'home.subjects', args: { n: major.subjects.length } }),
        ),
        major.subjects.map((subject) =>
          h(
            'details',
            { class: 'subject', dataset: { subject: subject.id } },
            h(
              'summary',
              {},
              h('span', { class: 'summary-title', text: pick(subject.name) }),
              h('span', { class: 'count', i18n: 'home.topics', args: { n: subject.topics.length } }),
            ),
            h(
              'ul',
              { class: 'topic-list' },
              subject.topics.map((topic) =>
                h(
                  'li',
                  {},
                  h(
                    'a',
                    { href: `#/topic/${encodeURIComponent(topic.topicId)}`, dataset: { topic: topic.topicId } },
                    h('span', { class: 'topic-name', text: pick(topic.title) }),
                    h('span', { class: 'topic-desc', text: pick(topic.description) }),
                  ),
                ),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

// ==== Topic and the live lecture ================================================================

async function topicView(ctx, topicId) {
  app.append(loading());
  const path = `/api/v1/topics/${encodeURIComponent(topicId)}`;
  const [topic, stats, info] = await Promise.all([
    api(path, { auth: false, signal: ctx.signal }),
    api(`${path}/stats`, { auth: false, signal: ctx.signal }).catch(() => null),
    getInfo(),
  ]);
  if (!ctx.alive()) return;
  const teach = h('section', { class: 'card teach', 'aria-labelledby': 'teach-title' });
  app.replaceChildren(
    h('p', { class: 'breadcrumb', text: `${pick(topic.major.name)} › ${pick(topic.subject.name)}` }),
    h('h1', { testid: 'topic-title', text: pick(topic.title) }),
    h('p', { class: 'description', text: pick(topic.description) }),
    keyConcepts(topic),
    stats && h('p', { class: 'muted', testid: 'topic-stats', ...topicStatsText(stats) }),
    teach,
  );
  teachControls(ctx, teach, topic, info);
}

function keyConcepts(topic) {
  const concepts = pickList(topic.keyConcepts);
  if (!concepts.length) return null;
  return h(
    'div',
    { class: 'concepts' },
    h('h2', { class: 'small-heading', i18n: 'topic.keyConcepts' }),
    h('ul', { class: 'chips' }, concepts.map((c) => h('li', { class: 'chip', text: c }))),
  );
}

function topicStatsText(stats) {
  const args = { learners: stats.learners, lectures: stats.lectures, average: fmtNumber(stats.averageScore) };
  return { i18n: stats.averageScore == null ? 'topic.statsNoGrade' : 'topic.stats', args };
}

/** The start controls: lecture language, record, and the typed lecture. */
function teachControls(ctx, host, topic, info) {
  const language = h(
    'select',
    { id: 'lecture-language', testid: 'lecture-language', value: lang },
    ['ko', 'en'].map((code) => h('option', { value: code, i18n: `lang.${code}` })),
  );
  const textArea = h('textarea', {
    id: 'text-lecture', testid: 'text-lecture', rows: '6', maxlength: '20000', placeholder: 'topic.textPlaceholder',
  });
  const record = h('button', { type: 'button', class: 'button primary record', testid: 'record', i18n: 'topic.record' });
  const submit = h('button', { type: 'submit', class: 'button', testid: 'text-submit', i18n: 'topic.textSubmit' });
  const form = h(
    'form',
    { class: 'text-form' },
    h('h3', { class: 'small-heading' }, h('label', { for: 'text-lecture', i18n: 'topic.orType' })),
    textArea,
    h('div', { class: 'actions' }, submit),
  );
  record.addEventListener('click', () => {
    liveLecture(ctx, host, { topic, info, language: language.value });
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = textArea.value.trim();
    if (!text) {
      showError(new Error(t('topic.textEmpty')));
      textArea.focus();
      return;
    }
    liveLecture(ctx, host, { topic, info, language: language.value, text });
  });
  host.replaceChildren(
    h('h2', { id: 'teach-title', i18n: 'topic.teach' }),
    h('p', { class: 'muted', i18n: 'topic.teachHint' }),
    h('div', { class: 'field' }, h('label', { for: 'lecture-language', i18n: 'topic.language' }), language),
    info && !info.speechToText && h('p', { class: 'notice', testid: 'no-stt', role: 'note', i18n: 'topic.noStt' }),
    h(
      'div',
      { class: 'actions' },
      record,
      info && info.maxLectureSecs && h('span', { class: 'muted', i18n: 'topic.maxLength', args: { min: Math.round(info.maxLectureSecs / 60) } }),
    ),
    form,
  );
}

/**
 * Records (or sends a typed) lecture over the live WebSocket and shows it as it happens: the
 * connection, the lecture's state, the level and clock, the live transcript and the feedback
 * streaming in. A grade opens the lecture's page.
 */
async function liveLecture(ctx, host, { topic, info, language, text }) {
  const audio = text === undefined;
  const feed = feedView({ transcript: 'live-transcript', feedback: 'feedback' });
  const connection = h('span', { class: 'pill connection', testid: 'connection', role: 'status', dataset: { state: 'connecting' }, i18n: 'conn.connecting' });
  const lectureState = h('span', { class: 'pill lecture-state', testid: 'lecture-state', i18n: 'state.starting' });
  const note = h('p', { class: 'note', role: 'status', i18n: audio ? 'mic.waiting' : 'live.sending' });
  const outcome = h('div', { class: 'actions' });
  const meter = levelMeter();
  const timer = h('span', { class: 'timer', testid: 'timer', role: 'timer', label: 'live.timer', text: '0:00' });
  const pause = h('button', { type: 'button', class: 'button', testid: 'pause', i18n: 'live.pause' });
  const resume = h('button', { type: 'button', class: 'button', testid: 'resume', i18n: 'live.resume', hidden: true });
  const finish = h('button', { type: 'button', class: 'button primary', testid: 'finish', i18n: 'live.finish' });
  const cancel = h('button', { type: 'button', class: 'button ghost', testid: 'cancel', i18n: 'live.cancel' });
  const controls = h('div', { class: 'actions recording-controls' }, pause, resume, finish, cancel);
  const buttons = [pause, resume, finish, cancel];

  host.replaceChildren(
    h('h2', { text: pick(topic.title) }),
    h('div', { class: 'status-row' }, connection, lectureState),
    audio && h('div', { class: 'meter-row' }, meter.el, timer),
    audio && controls,
    note,
    outcome,
    h('h3', { class: 'small-heading', i18n: 'live.transcript' }),
    feed.transcript,
    feed.graderNote,
    h('h3', { class: 'small-heading', i18n: 'live.feedback' }),
    feed.feedback,
  );

  let mic = null;
  const session = new LiveSession({ getToken: (options) => accessToken(options), onEvent });
  activeSession = session;
  const warnOnLeave = (event) => event.preventDefault();
  window.addEventListener('beforeunload', warnOnLeave);
  ctx.busy = () => session.phase !== 'done' && !session.closed;
  ctx.onCleanup(() => {
    window.removeEventListener('beforeunload', warnOnLeave);
    leave();
  });

  function releaseMic() {
    if (mic) mic.release();
    mic = null;
    meter.set(0);
  }

  // The view goes away (another page): end a lecture being recorded rather than leave it live
  // on the server for the grace period. The microphone delivers its last chunk first, so that
  // the session finishes with everything recorded (or cancels when nothing was).
  async function leave() {
    const m = mic;
    mic = null;
    if (m && session.recording()) await m.stop();
    if (m) m.release();
    session.leave();
  }

  function setState(state) {
    lectureState.dataset.state = state;
    setText(lectureState, `state.${state}`);
  }

  function setNote(key, args) {
    setText(note, key, args);
  }

  function endControls() {
    for (const button of buttons) button.disabled = true;
    controls.hidden = true;
  }

  function showOutcome({ lecture = true, again = true } = {}) {
    outcome.replaceChildren(
      lecture && session.lectureId && h('a', { class: 'button', href: `#/lecture/${encodeURIComponent(session.lectureId)}`, i18n: 'live.viewLecture' }),
      again && h('button', { type: 'button', class: 'button ghost', i18n: 'live.again', onclick: route }),
    );
  }

  function onEvent(event) {
    if (!ctx.alive()) return;
    if (event.type === 'connection') {
      connection.dataset.state = event.state;
      setText(connection, `conn.${event.state}`);
    } else if (event.type === 'progress') {
      timer.textContent = fmtClock(session.seconds());
    } else if (event.type === 'replay') {
      feed.reset();
    } else if (event.type === 'frame') {
      onFrame(event.frame);
    } else if (event.type === 'error') {
      onError(event);
    } else if (event.type === 'ended') {
      explainEnd();
    }
  }

  function onFrame(frame) {
    feed.apply(frame);
    switch (frame.type) {
      case 'started':
        if (audio) {
          setState('recording');
          setNote('state.recording');
        } else {
          setState('finished'); // a typed lecture is finished as it starts
          setNote('live.processing');
        }
        break;
      case 'reconnected':
        setState(frame.state);
        // Also the first news of a lecture resumed after its `started` was lost.
        if (frame.state === 'recording' || frame.state === 'paused') setNote(`state.${frame.state}`);
        break;
      case 'state':
        setState(frame.state);
        onState(frame);
        break;
      case 'transcriptCompleted':
        if (frame.empty) {
          setNote('live.nothingRecognised');
          showOutcome();
        }
        break;
      case 'regrading':
        setNote('live.regrading');
        break;
      case 'gradingFailed':
        setNote('live.gradingFailed', { message: { err: frame.code, message: frame.message } });
        showOutcome();
        break;
      case 'graded':
        location.hash = `#/lecture/${encodeURIComponent(frame.lectureId)}`;
        break;
    }
  }

  function onState(frame) {
    if (frame.state === 'finished') {
      releaseMic();
      endControls();
      if (frame.reason === 'max_duration') {
        const secs = (info && info.maxLectureSecs) || session.maxLectureSecs;
        setNote('live.maxDuration', { min: Math.round(secs / 60) });
      } else {
        setNote('live.processing');
      }
      if (audio && info && !info.speechToText) checkAwaiting();
    } else if (frame.state === 'cancelled' || frame.state === 'abandoned') {
      releaseMic();
      endControls();
      setNote(`live.${frame.state}`);
      showOutcome({ lecture: frame.state === 'abandoned' });
    } else if (frame.state === 'paused' || frame.state === 'recording') {
      setNote(`state.${frame.state}`);
    }
  }

  // With no speech-to-text, nothing more comes for a finished recording: say so and stop.
  async function checkAwaiting() {
    try {
      const lecture = await api(`/api/v1/lectures/${encodeURIComponent(session.lectureId)}`, { signal: ctx.signal });
      if (lecture.processing !== 'awaiting_transcription' || !ctx.alive()) return;
      session.close();
      setNote('live.awaiting');
      showOutcome();
    } catch (err) {
      showError(err);
    }
  }

  // The lecture's feed ended without a grade: read why.
  async function explainEnd() {
    try {
      const lecture = await api(`/api/v1/lectures/${encodeURIComponent(session.lectureId)}`, { signal: ctx.signal });
      if (!ctx.alive()) return;
      if (lecture.grade) {
        location.hash = `#/lecture/${encodeURIComponent(lecture.lectureId)}`;
        return;
      }
      if (lecture.processing === 'awaiting_transcription') setNote('live.awaiting');
      else setNote('live.ended', { state: t(`processing.${lecture.processing}`) });
      showOutcome();
    } catch (err) {
      showError(err);
    }
  }

  function onError(event) {
    if (event.code === 'connection_lost') {
      releaseMic();
      endControls();
      setNote('live.connectionLost');
      showOutcome();
      return;
    }
    showError(event);
    // A `finish` refused for a reason the session does not retry: let the learner cancel
    // instead of waiting on "Saving…".
    if (session.ending === 'finish' && session.recording() && event.code !== 'storage_unavailable') {
      cancel.disabled = false;
    }
    if (session.phase === 'done') {
      releaseMic();
      endControls();
      showOutcome({ lecture: !!session.lectureId });
    }
  }

  pause.addEventListener('click', async () => {
    pause.disabled = true;
    if (mic) await mic.pause();
    session.pause();
    meter.set(0);
    pause.hidden = true;
    resume.hidden = false;
    resume.disabled = false;
    resume.focus();
  });
  resume.addEventListener('click', async () => {
    resume.disabled = true;
    session.resume();
    if (mic) await mic.resume();
    resume.hidden = true;
    pause.hidden = false;
    pause.disabled = false;
    pause.focus();
  });
  finish.addEventListener('click', async () => {
    for (const button of buttons) button.disabled = true;
    setNote('live.finishing');
    // Every captured chunk reaches the session before `finish` is sent after them.
    if (mic) await mic.stop();
    releaseMic();
    session.finish();
  });
  cancel.addEventListener('click', async () => {
    endControls();
    releaseMic();
    const lectureId = session.lectureId;
    const sent = session.cancel();
    if (sent === 'sent' || sent === 'queued') {
      // A `state: cancelled` frame follows (after `started`, when the start is in flight).
      setNote('live.cancelling');
      return;
    }
    // 'none': nothing was started. 'offline': the socket is down; cancel over HTTP, which also
    // ends a lecture waiting for a reconnect.
    session.close();
    if (sent === 'offline') {
      try {
        await api(`/api/v1/lectures/${encodeURIComponent(lectureId)}/cancel`, { method: 'POST' });
      } catch (err) {
        showError(err);
      }
    }
    if (!ctx.alive()) return;
    setState('cancelled');
    setNote('live.cancelled');
    showOutcome({ lecture: false });
  });

  if (!audio) {
    session.startText({ topicId: topic.topicId, text, language });
    return;
  }
  for (const button of buttons) button.disabled = true;
  const m = new Microphone((pcm, level) => {
    if (session.localPaused) return;
    meter.set(level);
    session.pushChunk(pcm);
  });
  mic = m;
  try {
    await m.start();
  } catch (err) {
    if (mic === m) mic = null;
    session.close();
    if (!ctx.alive()) return;
    const denied = err && (err.name === 'NotAllowedError' || err.name === 'SecurityError');
    showError(new Error(t(denied ? 'mic.denied' : 'mic.unavailable')));
    teachControls(ctx, host, topic, info);
    return;
  }
  // The view went away while the browser asked for the microphone: `leave` could not stop a
  // microphone that was not open yet, so release it here.
  if (!ctx.alive() || mic !== m) {
    m.release();
    return;
  }
  for (const button of buttons) button.disabled = false;
  setNote('state.starting');
  session.startAudio({ topicId: topic.topicId, language });
}

/** The microphone level: `data-level` (0..1, smoothed) and a bar. */
function levelMeter() {
  const bar = h('span', { class: 'level-bar' });
  const el = h('div', {
    class: 'level', testid: 'level', role: 'meter', label: 'live.level',
    'aria-valuemin': '0', 'aria-valuemax': '1', 'aria-valuenow': '0', dataset: { level: '0' },
  }, bar);
  let smoothed = 0;
  return {
    el,
    set(rms) {
      // Speech sits between about -50 and -10 dBFS: map -60..0 dB onto the bar.
      const db = 20 * Math.log10(Math.max(rms, 1e-6));
      const target = Math.min(1, Math.max(0, (db + 60) / 60));
      // Rise fast, fall slowly, like a VU meter.
      smoothed = rms === 0 ? 0 : target > smoothed ? 0.5 * smoothed + 0.5 * target : 0.85 * smoothed + 0.15 * target;
      el.dataset.level = smoothed.toFixed(3);
      el.setAttribute('aria-valuenow', smoothed.toFixed(2));
      bar.style.width = `${(smoothed * 100).toFixed(1)}%`;
    },
  };
}

/**
 * The live parts of a lecture (transcript by segment, grading notice, feedback text as it
 * streams), driven by frames. `ids` names the test ids of the transcript and feedback.
 */
function feedView(ids) {
  const segments = new Map(); // index → {text, final}
  const transcript = h('div', { class: 'transcript', testid: ids.transcript, placeholder: 'live.transcriptEmpty' });
  const feedback = h('div', { class: 'feedback-stream', testid: ids.feedback, placeholder: 'live.feedbackEmpty' });
  const graderNote = h('p', { class: 'muted small' });

  function draw() {
    const indexes = [...segments.keys()].sort((a, b) => a - b);
    transcript.replaceChildren(
      ...indexes.map((i) => h('span', { class: segments.get(i).final ? 'segment' : 'segment draft', text: `${segments.get(i).text} ` })),
    );
  }

  return {
    transcript,
    feedback,
    graderNote,
    reset() {
      segments.clear();
      draw();
      feedback.textContent = '';
      graderNote.textContent = '';
    },
    apply(frame) {
      switch (frame.type) {
        case 'transcriptDelta':
          if (segments.get(frame.index)?.final) return;
          segments.set(frame.index, { text: frame.text, final: false });
          draw();
          break;
        case 'transcript':
          segments.set(frame.index, { text: frame.text, final: true });
          draw();
          break;
        case 'transcriptCompleted':
          // A typed lecture has no segments: its text is the transcript.
          if (!segments.size && frame.text) {
            segments.set(0, { text: frame.text, final: true });
            draw();
          }
          break;
        case 'grading':
          // A second `grading` in an attempt is the rubric standing in: its feedback replaces
          // the model's. Clearing on every `grading` covers that and re-grades alike.
          feedback.textContent = '';
          if (frame.fallbackReason) setText(graderNote, 'grader.fallback', { reason: fallbackReason(frame.fallbackReason) });
          else setText(graderNote, frame.grader === 'llm' ? 'grader.gradingLlm' : 'grader.gradingRubric');
          break;
        case 'regrading':
          feedback.textContent = '';
          break;
        case 'graded':
          setText(graderNote, frame.grader === 'llm' ? 'grader.llm' : 'grader.rubric');
          break;
        case 'feedbackDelta':
        case 'feedback':
          feedback.append(frame.text);
          break;
      }
    },
  };
}

// ==== A lecture's result ========================================================================

async function lectureView(ctx, lectureId) {
  app.append(loading());
  const path = `/api/v1/lectures/${encodeURIComponent(lectureId)}`;
  const [lecture, index] = await Promise.all([
    api(path, { signal: ctx.signal }),
    getCatalog().catch(() => null),
  ]);
  if (!ctx.alive()) return;
  const topic = index && index.topics.get(lecture.topicId);
  const body = h('div', { class: 'lecture-body' });
  app.replaceChildren(
    h('p', { class: 'breadcrumb' }, h('a', { href: `#/topic/${encodeURIComponent(lecture.topicId)}`, text: topic ? pick(topic.title) : lecture.topicId })),
    h('h1', { i18n: 'result.title' }),
    h('p', { class: 'muted' }, lectureMeta(lecture)),
    body,
  );
  if (lecture.grade) {
    body.append(
      gradeView(lecture.grade),
      ratingView(lecture),
      shareView(lecture.lectureId),
    );
  } else {
    lectureProgress(ctx, body, lecture);
  }
  body.append(
    section('result.transcript', lecture.transcript
      ? h('p', { class: 'prose', testid: 'transcript', text: lecture.transcript })
      : empty('result.noTranscript')),
    h('p', {}, h('a', { class: 'button', href: `#/topic/${encodeURIComponent(lecture.topicId)}`, i18n: 'result.teachAgain' })),
  );
}

function lectureMeta(lecture) {
  return h('span', {
    i18n: 'result.meta',
    args: { date: fmtDate(lecture.startedAt), mode: t(`mode.${lecture.mode}`), language: languageName(lecture.language) },
  });
}

/** A lecture without a grade: why, and, while it is being processed, its feed live. */
function lectureProgress(ctx, body, lecture) {
  const status = h('p', { class: 'note', role: 'status' });
  body.append(status);
  if (lecture.processing === 'awaiting_transcription') return setText(status, 'live.awaiting');
  if (lecture.processing === 'transcript_empty') return setText(status, 'live.nothingRecognised');
  if (lecture.processing === 'failed') {
    const { failure } = lecture;
    return setText(status, 'result.failed', { message: failure ? { err: failure.code, message: failure.message } : '' });
  }
  if (lecture.status === 'cancelled' || lecture.status === 'abandoned') return setText(status, `live.${lecture.status}`);
  setText(status, 'result.following');
  const feed = feedView({ transcript: 'live-transcript', feedback: 'feedback' });
  const stateEl = h('span', { class: 'pill lecture-state', testid: 'lecture-state', dataset: { state: lecture.status }, i18n: `state.${lecture.status}` });
  body.append(
    h('div', { class: 'status-row' }, stateEl),
    h('h3', { class: 'small-heading', i18n: 'live.transcript' }),
    feed.transcript,
    feed.graderNote,
    h('h3', { class: 'small-heading', i18n: 'live.feedback' }),
    feed.feedback,
  );
  followLecture(ctx, lecture.lectureId, { token: true }, (frame) => {
    feed.apply(frame);
    if (frame.type === 'state') {
      stateEl.dataset.state = frame.state;
      setText(stateEl, `state.${frame.state}`);
    }
    if (frame.type === 'gradingFailed') {
      setText(status, 'live.gradingFailed', { message: { err: frame.code, message: frame.message } });
    }
    if (frame.type === 'transcriptCompleted' && frame.empty) setText(status, 'live.nothingRecognised');
    if (frame.type === 'graded') route();
  }, () => {
    // Ended without a grade (awaiting transcription, say): show the lecture as it stands.
    if (ctx.alive()) route();
  });
}

/**
 * Follows a lecture's events over SSE, skipping frames already seen (by `version`), and opens
 * a new stream (with a fresh token) if the browser gives up on one. `auth` is {token: true} or
 * {share}. Closed when the view goes away.
 */
function followLecture(ctx, lectureId, auth, onFrame, onEnd, onStatus = () => {}) {
  let lastVersion = -1;
  let source = null;
  let retry = null;
  let ended = false;
  let forceToken = false; // the last stream was refused before it opened: refresh the token
  async function open() {
    let query;
    try {
      query = auth.share
        ? `share=${encodeURIComponent(auth.share)}`
        : `token=${encodeURIComponent(await accessToken({ force: forceToken }))}`;
      forceToken = false;
    } catch (err) {
      // No token (the server unreachable for the refresh, say): try again later.
      showError(err);
      if (ctx.alive() && !ended) retry = setTimeout(open, 3000);
      return;
    }
    if (!ctx.alive() || ended) return;
    onStatus('connecting');
    let opened = false; // the browser's current attempt was accepted
    source = new EventSource(`/api/v1/lectures/${encodeURIComponent(lectureId)}/events?${query}`);
    source.onopen = () => {
      opened = true;
      onStatus('open');
    };
    source.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === 'caughtUp') return;
      if (typeof frame.version === 'number') {
        if (frame.version <= lastVersion) return;
        lastVersion = frame.version;
      }
      onFrame(frame);
    };
    source.addEventListener('end', () => {
      ended = true;
      source.close();
      onStatus('closed');
      onEnd();
    });
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) {
        opened = false; // the browser reconnects by itself
        return onStatus('connecting');
      }
      // Refused before it opened: the server may reject a token our clock thinks valid (clock
      // skew, a rotated secret), so the next stream gets a freshly refreshed one.
      if (!opened && !auth.share) forceToken = true;
      source.close();
      onStatus('closed');
      retry = setTimeout(open, 3000);
    };
  }
  ctx.onCleanup(() => {
    ended = true;
    clearTimeout(retry);
    if (source) source.close();
  });
  open();
}

const SUB_SCORES = ['accuracy', 'completeness', 'clarity', 'structure'];

/** Why the model's grade failed (a provider error code) as an `{err}` argument for t(). */
function fallbackReason(code) {
  return { err: code, message: code };
}

/** The score and the four sub-scores as bars. */
function scoreView(grade) {
  return h(
    'div',
    { class: 'score-block' },
    h(
      'div',
      { class: 'score', 'aria-label': `${t('result.score')} ${grade.score} / 100` },
      h('span', { class: 'score-value', testid: 'score', text: String(grade.score) }),
      h('span', { class: 'score-max', i18n: 'result.outOf' }),
    ),
    h(
      'ul',
      { class: 'subscores' },
      SUB_SCORES.map((name) => {
        const value = grade.subScores[name];
        const fill = h('span', { class: 'bar-fill' });
        fill.style.width = `${Math.max(0, Math.min(100, value))}%`;
        return h(
          'li',
          { class: 'subscore', testid: `subscore-${name}` },
          h('span', { class: 'subscore-name', i18n: `result.sub.${name}` }),
          h('span', { class: 'bar', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(value), label: `result.sub.${name}` }, fill),
          h('span', { class: 'subscore-value', text: String(value) }),
        );
      }),
    ),
  );
}

function gradeView(grade) {
  const graderKey = grade.grader === 'llm' ? 'grader.llm' : 'grader.rubric';
  return h(
    'div',
    { class: 'result' },
    h('div', { class: 'card' }, scoreView(grade), h('p', { class: 'muted small grader', testid: 'grader', dataset: { grader: grade.grader } },
      h('span', { i18n: graderKey }),
      grade.fallbackReason && ' ',
      grade.fallbackReason && h('span', { i18n: 'grader.fallback', args: { reason: fallbackReason(grade.fallbackReason) } }))),
    section('result.feedback', h('p', { class: 'prose', testid: 'feedback', text: grade.feedback })),
    listSection('result.strengths', 'strengths', grade.strengths),
    listSection('result.improvements', 'improvements', grade.improvements),
    listSection('result.misconceptions', 'misconceptions', grade.misconceptions),
  );
}

function listSection(titleKey, testid, items) {
  return section(
    titleKey,
    h('ul', { class: 'bullets', testid }, items.map((item) => h('li', { text: item }))),
    !items.length && empty('common.none'),
  );
}

/** Five buttons rating how helpful the feedback was; `data-rating` is what the server saved. */
function ratingView(lecture) {
  const container = h('div', { class: 'rating', testid: 'rating', role: 'group', 'aria-labelledby': 'rate-title' });
  const thanks = h('p', { class: 'muted small', role: 'status' });
  const buttons = [1, 2, 3, 4, 5].map((n) =>
    h('button', { type: 'button', class: 'star', testid: `rate-${n}`, 'aria-pressed': 'false', text: '★' }),
  );
  buttons.forEach((button, i) => button.setAttribute('aria-label', t('result.rateN', { n: i + 1 })));

  function show(rating) {
    if (rating == null) container.removeAttribute('data-rating');
    else container.dataset.rating = String(rating);
    buttons.forEach((button, i) => {
      button.classList.toggle('on', rating != null && i < rating);
      button.setAttribute('aria-pressed', String(rating === i + 1));
    });
    if (rating != null) setText(thanks, 'result.rated', { n: rating });
  }

  buttons.forEach((button, i) =>
    button.addEventListener('click', async () => {
      buttons.forEach((b) => (b.disabled = true));
      try {
        const answer = await api(`/api/v1/lectures/${encodeURIComponent(lecture.lectureId)}/rating`, {
          method: 'POST',
          body: { rating: i + 1 },
        });
        show(answer.rating);
      } catch (err) {
        showError(err);
      } finally {
        buttons.forEach((b) => (b.disabled = false));
      }
    }),
  );
  container.append(h('h2', { id: 'rate-title', i18n: 'result.rate' }), h('div', { class: 'stars' }, buttons), thanks);
  show(lecture.rating);
  return container;
}

function shareView(lectureId) {
  const out = h('div', { class: 'share-out' });
  const button = h('button', { type: 'button', class: 'button', testid: 'share', i18n: 'result.share' });
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      const link = await api(`/api/v1/lectures/${encodeURIComponent(lectureId)}/share`, { method: 'POST', body: {} });
      const url = `${location.origin}/#/watch/${encodeURIComponent(lectureId)}?share=${encodeURIComponent(link.token)}`;
      const input = h('input', { id: 'share-link', type: 'text', readonly: true, testid: 'share-link', value: url });
      const copy = h('button', { type: 'button', class: 'button ghost', i18n: 'result.copy' });
      copy.addEventListener('click', async () => {
        input.select();
        try {
          await navigator.clipboard.writeText(url);
          setText(copy, 'result.copied');
        } catch {
          // No clipboard access (an insecure page): the selected link can be copied by hand.
        }
      });
      out.replaceChildren(
        h('label', { for: 'share-link', class: 'small-heading', i18n: 'result.shareLabel' }),
        h('div', { class: 'share-row' }, input, copy),
        h('p', { class: 'muted small', i18n: 'result.shareHint', args: { time: fmtDate(link.expiresAt) } }),
      );
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
    }
  });
  return h('div', { class: 'share' }, button, out);
}

// ==== Watching a shared lecture =================================================================

async function watchView(ctx, lectureId) {
  const share = ctx.query.get('share') || '';
  app.append(loading());
  // Read with the share token only: the viewer's own token would not own this lecture.
  const [lecture, index] = await Promise.all([
    api(`/api/v1/lectures/${encodeURIComponent(lectureId)}?share=${encodeURIComponent(share)}`, { auth: false, signal: ctx.signal }),
    getCatalog().catch(() => null),
  ]);
  if (!ctx.alive()) return;
  const topic = index && index.topics.get(lecture.topicId);
  const feed = feedView({ transcript: 'watch-transcript', feedback: 'watch-feedback' });
  const stateEl = h('span', { class: 'pill lecture-state', testid: 'watch-state', dataset: { state: lecture.status }, i18n: `state.${lecture.status}` });
  const live = h('p', { class: 'muted small', role: 'status', i18n: 'watch.waiting' });
  const result = h('div', { class: 'watch-result' });
  app.replaceChildren(
    h('p', { class: 'breadcrumb', i18n: 'watch.title' }),
    h('h1', { text: topic ? pick(topic.title) : lecture.topicId }),
    h('p', { class: 'muted' }, lectureMeta(lecture)),
    h('div', { class: 'status-row' }, stateEl),
    live,
    result,
    h('h2', { i18n: 'watch.transcript' }),
    feed.transcript,
    feed.graderNote,
    h('h2', { i18n: 'watch.feedback' }),
    feed.feedback,
  );
  followLecture(ctx, lectureId, { share }, (frame) => {
    feed.apply(frame);
    if (frame.type === 'state') {
      stateEl.dataset.state = frame.state;
      setText(stateEl, `state.${frame.state}`);
    } else if (frame.type === 'graded') {
      result.replaceChildren(h('div', { class: 'card' }, scoreView(frame)));
    } else if (frame.type === 'regrading') {
      result.replaceChildren();
    }
  }, () => setText(live, 'watch.ended'));
}

// ==== The learner's page ========================================================================

async function meView(ctx) {
  app.append(loading());
  // Fetched alongside, but its failure stays inside the reminders section.
  const prefs = api('/api/v1/me/notifications', { signal: ctx.signal }).then(
    (value) => ({ value }),
    (error) => ({ error }),
  );
  const [stats, page, index] = await Promise.all([
    api('/api/v1/me/stats', { signal: ctx.signal }),
    api('/api/v1/me/lectures?limit=10', { signal: ctx.signal }),
    getCatalog().catch(() => null),
  ]);
  if (!ctx.alive()) return;
  app.replaceChildren(
    h('h1', { i18n: 'me.title' }),
    renameForm(stats.name),
    nudgesSection(ctx, prefs, stats.timeZone),
    statTiles(stats),
    section('me.trend', trendChart(stats.trend)),
    section('me.subjects', subjectTable(stats.subjects, index)),
    section('me.history', history(ctx, page)),
  );
}

function statTiles(stats) {
  const tile = (testid, key, value) =>
    h('div', { class: 'tile' }, h('span', { class: 'tile-label', i18n: key }), h('strong', { class: 'tile-value', testid, text: value }));
  return h(
    'div',
    { class: 'tiles' },
    tile('stat-graded', 'me.graded', String(stats.lecturesGraded)),
    tile('stat-average', 'me.average', fmtNumber(stats.averageScore)),
    tile('stat-best', 'me.best', stats.bestScore == null ? t('common.dash') : String(stats.bestScore)),
    tile('stat-speaking', 'me.speaking', fmtDuration(stats.speakingSeconds)),
    tile('stat-streak', 'me.streak', days(stats.currentStreakDays)),
    tile('stat-longest', 'me.longest', days(stats.longestStreakDays)),
  );
}

/** The scores over time: a polyline with a circle per grade on a 0–100 axis. */
function trendChart(trend) {
  if (!trend.length) return empty('me.trendEmpty');
  const width = 600;
  const height = 220;
  const pad = { left: 36, right: 16, top: 14, bottom: 22 };
  const innerW = width - pad.left - pad.right;
  const innerH = height - pad.top - pad.bottom;
  const x = (i) => pad.left + (trend.length === 1 ? innerW / 2 : (innerW * i) / (trend.length - 1));
  const y = (score) => pad.top + innerH * (1 - score / 100);
  const grid = [0, 25, 50, 75, 100].map((v) =>
    h('g', { class: 'grid' },
      h('line', { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }),
      h('text', { x: pad.left - 6, y: y(v) + 4, 'text-anchor': 'end', text: String(v) })),
  );
  const points = trend.map((p, i) => `${x(i).toFixed(1)},${y(p.score).toFixed(1)}`).join(' ');
  return h(
    'svg',
    {
      class: 'trend', testid: 'trend-chart', viewBox: `0 0 ${width} ${height}`, role: 'img',
      'aria-label': t('me.trendLabel', { n: trend.length }), preserveAspectRatio: 'xMidYMid meet',
    },
    grid,
    h('polyline', { class: 'trend-line', points }),
    trend.map((p, i) =>
      h('circle', { class: 'trend-point', cx: x(i).toFixed(1), cy: y(p.score).toFixed(1), r: '5', dataset: { score: String(p.score) } },
        h('title', { text: `${p.score} · ${fmtDate(p.gradedAt)}` })),
    ),
  );
}

function subjectTable(subjects, index) {
  if (!subjects.length) return empty('me.subjectsEmpty');
  const name = (row) => {
    const subject = index && index.subjects.get(row.subjectId);
    return subject ? `${pick(subject.major.name)} › ${pick(subject.name)}` : row.subjectId;
  };
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { class: 'table', testid: 'subjects' },
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col', i18n: 'me.subject' }),
        h('th', { scope: 'col', class: 'num', i18n: 'me.colGraded' }),
        h('th', { scope: 'col', class: 'num', i18n: 'me.colAverage' }),
        h('th', { scope: 'col', class: 'num', i18n: 'me.colBest' }))),
      h('tbody', {}, subjects.map((row) =>
        h('tr', { dataset: { subjectId: row.subjectId } },
          h('th', { scope: 'row', text: name(row) }),
          h('td', { class: 'num', text: String(row.graded) }),
          h('td', { class: 'num', text: fmtNumber(row.averageScore) }),
          h('td', { class: 'num', text: String(row.bestScore) })))),
    ),
  );
}

/** The history with a "load more" that follows `nextCursor`. */
function history(ctx, firstPage) {
  const list = h('ul', { class: 'lecture-list', testid: 'history' });
  const more = h('button', { type: 'button', class: 'button ghost', testid: 'load-more', i18n: 'me.loadMore' });
  const wrap = h('div', {}, list, more);
  let cursor = null;
  function add(page) {
    list.append(...page.lectures.map(lectureRow));
    cursor = page.nextCursor;
    more.hidden = !cursor;
    if (!list.children.length) wrap.replaceChildren(empty('me.historyEmpty'), list);
  }
  more.addEventListener('click', async () => {
    more.disabled = true;
    try {
      add(await api(`/api/v1/me/lectures?limit=10&cursor=${encodeURIComponent(cursor)}`, { signal: ctx.signal }));
    } catch (err) {
      showError(err);
    } finally {
      more.disabled = false;
    }
  });
  add(firstPage);
  return wrap;
}

function renameForm(name) {
  const input = h('input', { id: 'rename-input', type: 'text', testid: 'rename-input', autocomplete: 'nickname', value: name });
  const error = h('p', { class: 'field-error', testid: 'rename-error', role: 'alert', 'aria-live': 'assertive' });
  const done = h('p', { class: 'muted small', role: 'status' });
  const submit = h('button', { type: 'submit', class: 'button primary', testid: 'rename-submit', i18n: 'me.renameSubmit' });
  const form = h(
    'form',
    { class: 'card rename', novalidate: true },
    h('h2', { i18n: 'me.rename' }),
    h('label', { for: 'rename-input', i18n: 'me.renameLabel' }),
    h('div', { class: 'share-row' }, input, submit),
    error,
    done,
  );
  input.setAttribute('aria-describedby', 'rename-error');
  error.id = 'rename-error';
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.textContent = '';
    done.textContent = '';
    try {
      const profile = await api('/api/v1/me', { method: 'PUT', body: { name: input.value } });
      saveDevice({ ...device, name: profile.name });
      input.value = profile.name;
      setText(done, 'me.renamed');
    } catch (err) {
      error.textContent = errorMessage(err);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

// ---- Study reminders (GET/PUT /api/v1/me/notifications) ----------------------------------------

const HOURS = Array.from({ length: 24 }, (_, hour) => hour);

function fmtHour(hour) {
  return `${String(hour).padStart(2, '0')}:00`;
}

function hourOptions() {
  return HOURS.map((hour) => h('option', { value: String(hour), text: fmtHour(hour) }));
}

function browserTimeZone() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || null;
  } catch {
    return null;
  }
}

/** The IANA zones the browser knows (sorted), plus `extra` ones it does not list. */
function timeZoneNames(extra) {
  let zones = [];
  try {
    if (typeof Intl.supportedValuesOf === 'function') zones = Intl.supportedValuesOf('timeZone');
  } catch {
    zones = [];
  }
  const all = new Set(zones);
  for (const zone of extra) if (zone) all.add(zone);
  return [...all].sort();
}

/**
 * The "Study reminders" card: loads the preferences from `prefsPromise` ({value} or {error})
 * and renders the form, or the error with a retry. `serverZone` is the server's time zone (the
 * default a learner who never saved gets).
 */
function nudgesSection(ctx, prefsPromise, serverZone) {
  const body = h('div', {}, loading());
  const card = h(
    'section',
    { class: 'card nudges', testid: 'nudges', 'aria-labelledby': 'nudges-title' },
    h('h2', { id: 'nudges-title', i18n: 'nudges.title' }),
    h('p', { class: 'muted small', i18n: 'nudges.intro' }),
    body,
  );
  const show = async (promise) => {
    const { value, error } = await promise;
    if (!ctx.alive()) return;
    if (error) {
      if (error.name === 'AbortError') return;
      body.replaceChildren(
        h('p', { class: 'error-state', testid: 'nudges-error', role: 'alert', i18n: 'nudges.loadFailed', args: { message: { err: error.code, message: error.message } } }),
        h('button', {
          type: 'button', class: 'button', i18n: 'common.retry',
          onclick: () => {
            body.replaceChildren(loading());
            show(api('/api/v1/me/notifications', { signal: ctx.signal }).then((v) => ({ value: v }), (e) => ({ error: e })));
          },
        }),
      );
      return;
    }
    body.replaceChildren(nudgesForm(value, serverZone));
  };
  show(prefsPromise);
  return card;
}

function nudgesForm(prefs, serverZone) {
  const neverSaved =
    !prefs.dailyReminder && !prefs.streakWarning && !prefs.weeklyDigest &&
    (serverZone == null || prefs.timeZone === serverZone);
  const zone = (neverSaved && browserTimeZone()) || prefs.timeZone;
  let channel = prefs.channel || (prefs.channels && prefs.channels[0]) || 'webhook';

  const kind = (testid, key) => {
    const id = `nudge-${testid}`;
    const box = h('input', { type: 'checkbox', id, testid: `nudge-${testid}`, 'aria-describedby': `${id}-hint` });
    const row = h(
      'div',
      { class: 'nudge-kind' },
      h('label', { class: 'check' }, box, h('span', { i18n: `nudges.${key}` })),
      h('p', { id: `${id}-hint`, class: 'muted small nudge-hint', i18n: `nudges.${key}Hint` }),
    );
    return [box, row];
  };
  const [daily, dailyRow] = kind('daily', 'daily');
  const [streak, streakRow] = kind('streak', 'streak');
  const [weekly, weeklyRow] = kind('weekly', 'weekly');

  const timeZone = h(
    'select',
    { id: 'nudge-timezone', testid: 'nudge-timezone', autocomplete: 'off' },
    timeZoneNames([zone, prefs.timeZone, serverZone]).map((name) => h('option', { value: name, text: name })),
  );
  const hour = h(
    'select',
    { id: 'nudge-hour', testid: 'nudge-hour' },
    h('option', { value: '', i18n: 'nudges.hourDefault' }),
    hourOptions(),
  );
  const quiet = h('input', { type: 'checkbox', id: 'nudge-quiet', testid: 'nudge-quiet' });
  const quietStart = h('select', { id: 'nudge-quiet-start', testid: 'nudge-quiet-start' }, hourOptions());
  const quietEnd = h('select', { id: 'nudge-quiet-end', testid: 'nudge-quiet-end' }, hourOptions());
  const language = h(
    'select',
    { id: 'nudge-language', testid: 'nudge-language' },
    ['ko', 'en'].map((code) => h('option', { value: code, i18n: `lang.${code}` })),
  );
  const error = h('p', { id: 'nudges-error', class: 'field-error', testid: 'nudges-error', role: 'alert', hidden: true });
  const saved = h('p', { class: 'muted small', testid: 'nudges-saved', role: 'status', hidden: true, i18n: 'nudges.saved' });
  const off = h('p', { class: 'notice', testid: 'nudges-off', role: 'note', hidden: true, i18n: 'nudges.off' });
  const submit = h('button', { type: 'submit', class: 'button primary', testid: 'nudges-save', i18n: 'nudges.save' });

  const syncQuiet = () => {
    quietStart.disabled = !quiet.checked;
    quietEnd.disabled = !quiet.checked;
  };
  quiet.addEventListener('change', syncQuiet);

  // Shows `p` in the controls; `timeZoneValue` and `languageValue` override the stored ones.
  function fill(p, timeZoneValue, languageValue) {
    daily.checked = !!p.dailyReminder;
    streak.checked = !!p.streakWarning;
    weekly.checked = !!p.weeklyDigest;
    timeZone.value = timeZoneValue || '';
    if (timeZoneValue && timeZone.value !== timeZoneValue) {
      // A zone the list lacks (a stored alias, say): add it rather than lose it.
      timeZone.append(h('option', { value: timeZoneValue, text: timeZoneValue }));
      timeZone.value = timeZoneValue;
    }
    hour.value = p.hour == null ? '' : String(p.hour);
    quiet.checked = p.quietHours != null;
    quietStart.value = String(p.quietHours ? p.quietHours.start : 22);
    quietEnd.value = String(p.quietHours ? p.quietHours.end : 7);
    language.value = languageValue === 'en' ? 'en' : 'ko';
    channel = p.channel || channel;
    off.hidden = p.delivery !== false;
    syncQuiet();
  }
  fill(prefs, zone, neverSaved ? lang : prefs.language);

  const fail = (message) => {
    error.textContent = message;
    error.hidden = false;
  };

  const form = h(
    'form',
    { class: 'nudges-form', novalidate: true },
    off,
    h('div', { class: 'nudge-kinds', role: 'group', 'aria-labelledby': 'nudges-title' }, dailyRow, streakRow, weeklyRow),
    h(
      'div',
      { class: 'filters' },
      h('div', { class: 'field' }, h('label', { for: 'nudge-timezone', i18n: 'nudges.timeZone' }), timeZone),
      h('div', { class: 'field' }, h('label', { for: 'nudge-hour', i18n: 'nudges.hour' }), hour),
      h('div', { class: 'field' }, h('label', { for: 'nudge-language', i18n: 'nudges.language' }), language),
    ),
    h(
      'fieldset',
      { class: 'nudge-quiet' },
      h('legend', { i18n: 'nudges.quiet' }),
      h('label', { class: 'check' }, quiet, h('span', { i18n: 'nudges.quietEnable' })),
      h(
        'div',
        { class: 'filters' },
        h('div', { class: 'field' }, h('label', { for: 'nudge-quiet-start', i18n: 'nudges.quietStart' }), quietStart),
        h('div', { class: 'field' }, h('label', { for: 'nudge-quiet-end', i18n: 'nudges.quietEnd' }), quietEnd),
      ),
    ),
    h('div', { class: 'actions' }, submit),
    error,
    saved,
  );

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    error.textContent = '';
    saved.hidden = true;
    if (!timeZone.value) {
      fail(t('nudges.timeZoneEmpty'));
      timeZone.focus();
      return;
    }
    if (quiet.checked && quietStart.value === quietEnd.value) {
      fail(t('nudges.quietSame'));
      quietEnd.focus();
      return;
    }
    const body = {
      dailyReminder: daily.checked,
      streakWarning: streak.checked,
      weeklyDigest: weekly.checked,
      channel,
      timeZone: timeZone.value,
      hour: hour.value === '' ? null : Number(hour.value),
      quietHours: quiet.checked ? { start: Number(quietStart.value), end: Number(quietEnd.value) } : null,
      language: language.value,
    };
    submit.disabled = true;
    try {
      const next = await api('/api/v1/me/notifications', { method: 'PUT', body });
      fill(next, next.timeZone, next.language);
      saved.hidden = false;
    } catch (err) {
      // invalid_preferences has no dictionary entry: the server's message, naming the field.
      fail(errorMessage(err));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

// ==== Rankings ==================================================================================

// Kept across visits and language changes.
const rankingFilters = { period: 'week', scope: '' };

async function rankingsView(ctx) {
  const period = h(
    'select',
    { id: 'rank-period', testid: 'period', value: rankingFilters.period },
    ['week', 'month', 'all'].map((p) => h('option', { value: p, i18n: `rank.${p}` })),
  );
  const scope = h('select', { id: 'rank-scope', testid: 'scope' }, h('option', { value: '', i18n: 'rank.overall' }));
  const liveStatus = h('span', { class: 'pill live-status', testid: 'live-status', role: 'status', dataset: { state: 'connecting' }, i18n: 'live.status.connecting' });
  const mine = h('div', { class: 'card my-rank', testid: 'my-rank', hidden: true });
  const board = h('div', { class: 'board' }, loading());
  app.append(
    h('div', { class: 'title-row' }, h('h1', { i18n: 'rank.title' }), liveStatus),
    h('p', { class: 'muted', i18n: 'rank.intro' }),
    h(
      'div',
      { class: 'filters' },
      h('div', { class: 'field' }, h('label', { for: 'rank-period', i18n: 'rank.period' }), period),
      h('div', { class: 'field' }, h('label', { for: 'rank-scope', i18n: 'rank.scope' }), scope),
    ),
    mine,
    board,
  );

  let previous = new Map(); // userId → "rank:points" as last shown
  let changed = new Set(); // users the live feed named since the last load
  let source = null;
  let debounce = null;
  let reopen = null;
  let loadSeq = 0;

  function query() {
    const params = new URLSearchParams({ period: rankingFilters.period });
    const [kind, id] = rankingFilters.scope.split(':');
    if (kind === 'major' || kind === 'subject') params.set(kind, id);
    return params;
  }

  async function load({ highlight = false } = {}) {
    const seq = ++loadSeq;
    const params = query();
    params.set('limit', '50');
    try {
      const ranking = await api(`/api/v1/rankings?${params}`, { signal: ctx.signal });
      if (!ctx.alive() || seq !== loadSeq) return;
      showMine(ranking.me);
      board.replaceChildren(rankingTable(ranking.entries, highlight));
    } catch (err) {
      if (!ctx.alive() || seq !== loadSeq) return;
      board.replaceChildren(h('p', { class: 'error-state', text: errorMessage(err) }));
      showError(err);
    }
  }

  function showMine(me) {
    mine.hidden = !me;
    if (!me) return;
    mine.replaceChildren(
      h('p', { class: 'my-rank-message', text: me.message }),
      me.rank != null && h('p', {
        class: 'muted small', i18n: 'rank.mine',
        args: { rank: me.rank, total: me.total, points: me.points, percentile: fmtNumber(me.percentile) },
      }),
    );
  }

  function rankingTable(entries, highlight) {
    const seen = new Map();
    const rows = entries.map((entry) => {
      const key = `${entry.rank}:${entry.points}`;
      seen.set(entry.userId, key);
      const isMe = device && entry.userId === device.userId;
      const moved = highlight && (changed.has(entry.userId) || previous.get(entry.userId) !== key);
      const row = h(
        'tr',
        {
          testid: 'ranking-row',
          class: [isMe && 'me', moved && 'changed'].filter(Boolean).join(' ') || null,
          dataset: { userId: entry.userId, rank: String(entry.rank), points: String(entry.points) },
          'aria-current': isMe ? 'true' : null,
        },
        h('td', { class: 'num rank', text: String(entry.rank) }),
        h('th', { scope: 'row' }, entry.name, isMe && h('span', { class: 'you' }, ' (', h('span', { i18n: 'rank.you' }), ')')),
        h('td', { class: 'num', text: String(entry.points) }),
        h('td', { class: 'num', text: String(entry.topics) }),
      );
      if (moved) setTimeout(() => row.classList.remove('changed'), 2500);
      return row;
    });
    previous = seen;
    changed = new Set();
    if (!entries.length) return empty('rank.empty');
    return h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'table ranking' },
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col', class: 'num', i18n: 'rank.rank' }),
          h('th', { scope: 'col', i18n: 'rank.name' }),
          h('th', { scope: 'col', class: 'num', i18n: 'rank.points' }),
          h('th', { scope: 'col', class: 'num', i18n: 'rank.topics' }))),
        h('tbody', {}, rows),
      ),
    );
  }

  function setLive(state) {
    liveStatus.dataset.state = state;
    setText(liveStatus, `live.status.${state}`);
  }

  function reloadSoon() {
    clearTimeout(debounce);
    debounce = setTimeout(() => load({ highlight: true }), 300);
  }

  function follow() {
    if (source) source.close();
    clearTimeout(reopen);
    setLive('connecting');
    source = new EventSource(`/api/v1/rankings/live?${query()}`);
    source.onopen = () => setLive('open');
    source.addEventListener('ranking', (event) => {
      try {
        for (const change of JSON.parse(event.data).changes) changed.add(change.userId);
      } catch {
        // A malformed event still means the board moved.
      }
      reloadSoon();
    });
    source.addEventListener('resync', reloadSoon);
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (too many followers, say): try again later, catching up with a reload.
        setLive('closed');
        reopen = setTimeout(() => {
          follow();
          load();
        }, 10000);
      } else {
        setLive('connecting');
      }
    };
  }

  function refilter() {
    rankingFilters.period = period.value;
    rankingFilters.scope = scope.value;
    previous = new Map();
    load();
    follow();
  }

  ctx.onCleanup(() => {
    clearTimeout(debounce);
    clearTimeout(reopen);
    if (source) source.close();
  });
  period.addEventListener('change', refilter);
  scope.addEventListener('change', refilter);

  load();
  follow();
  try {
    const index = await getCatalog();
    if (!ctx.alive()) return;
    scope.append(...scopeOptions(index));
    scope.value = rankingFilters.scope;
  } catch (err) {
    showError(err);
  }
}

function scopeOptions(index) {
  return index.list.map((major) =>
    h(
      'optgroup',
      { label: pick(major.name) },
      h('option', { value: `major:${major.id}`, text: pick(major.name) }),
      major.subjects.map((subject) => h('option', { value: `subject:${subject.id}`, text: `· ${pick(subject.name)}` })),
    ),
  );
}

// ==== Start =====================================================================================

/** Test hook: the live session's counters, and a way to simulate a network drop. */
window.teachback = {
  dropConnection() {
    if (activeSession) activeSession.dropConnection();
  },
  stats() {
    return activeSession
      ? activeSession.stats()
      : { lectureId: null, bytesSent: 0, chunks: 0, ackedSeq: 0, reconnects: 0, connection: 'closed' };
  },
};

async function start() {
  applyLang();
  showUserName();
  document.querySelector('[data-testid=lang-toggle]').addEventListener('click', toggleLang);
  document.querySelector('.toast-close').addEventListener('click', () => (document.getElementById('toast').hidden = true));
  window.addEventListener('hashchange', route);
  route();
  try {
    const me = await api('/api/v1/me');
    if (device && me.name !== device.name) saveDevice({ ...device, name: me.name });
  } catch (err) {
    showError(err);
  }
}

start();
