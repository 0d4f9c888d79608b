//! SEAT-5 under contention (issue 8): 64 clients race for the last free seats of one
//! license through every add path that license type has, round after round. No single
//! license has every path (join links, LMS and roster are teacher-only; OU sync and domain
//! claims exclude each other, OU-2), so the rounds take turns:
//!
//! - teacher: email, CSV, license key, join link, LMS auto-enrollment, Classroom roster;
//! - district with a linked OU: email, CSV, license key, OU sync;
//! - district with a claimed domain: email, CSV, license key, sign-up, domain scan.
//!
//! Each round checks, from the API and from the event log: users_count never exceeds seats
//! (after every event, not only at the end), exactly the free seats were taken, the admin
//! batches that found no seat were refused whole, nobody took a seat after someone had been
//! waitlisted, and a seat increase promotes the first waitlisted in log order (SEAT-4).
//! `SEAT_RACE_ROUNDS` sets the number of rounds (default 30).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{Event, License};
use proto::event_feed_client::EventFeedClient;
use proto::license_commands_client::LicenseCommandsClient;
use proto::license_queries_client::LicenseQueriesClient;
use server::{ManualClock, Scope, ServerConfig, Tokens};
use tokio::sync::{Barrier, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Request};

const STAFF: &str = "staff-token-for-seat-races";
const SYSTEM: &str = "system-token-for-seat-races";
const USER: &str = "user-token-for-seat-races";
const ADMIN: &str = "admin@north.edu";
/// Clients racing in each round.
const RACERS: usize = 64;
/// Connections the racers share (each carries several concurrent calls).
const CONNECTIONS: usize = 16;
/// Rounds when `SEAT_RACE_ROUNDS` is not set.
const ROUNDS_DEFAULT: usize = 30;
const CALL_TIMEOUT_SECONDS: u64 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Email,
    Csv,
    Key,
    Link,
    Lms,
    Roster,
    Ou,
    SignUp,
    Scan,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Teacher,
    DistrictOu,
    DistrictDomain,
}

impl Kind {
    fn paths(self) -> &'static [Path] {
        match self {
            Kind::Teacher => &[
                Path::Email,
                Path::Csv,
                Path::Key,
                Path::Link,
                Path::Lms,
                Path::Roster,
            ],
            Kind::DistrictOu => &[Path::Email, Path::Csv, Path::Key, Path::Ou],
            Kind::DistrictDomain => &[Path::Email, Path::Csv, Path::Key, Path::SignUp, Path::Scan],
        }
    }
}

/// What a racer heard.
#[derive(Debug, PartialEq)]
enum Heard {
    /// OK, with the position the call reached (0: nothing appended).
    Ok(u64),
    /// The admin batch did not fit (SEAT-3).
    NoSeat,
}

fn with_token<T>(message: T, token: &str, actor: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    if let Some(actor) = actor {
        request
            .metadata_mut()
            .insert("x-actor", actor.parse().expect("ascii"));
    }
    request
}

fn staff<T>(message: T) -> Request<T> {
    with_token(message, STAFF, None)
}

fn system<T>(message: T) -> Request<T> {
    with_token(message, SYSTEM, None)
}

struct Round {
    license: String,
    kind: Kind,
    seats: u64,
    key: String,
    link: String,
    teacher: String,
    domain: String,
    racers: Vec<(Path, String)>,
}

impl Round {
    fn ou_users(&self) -> Vec<proto::OuMember> {
        self.racers
            .iter()
            .filter(|(path, _)| *path == Path::Ou)
            .map(|(_, email)| proto::OuMember {
                email: email.clone(),
                ou_path: "/Students".into(),
                role: "student".into(),
                suspended: false,
            })
            .collect()
    }
}

/// One racer's call through its path.
async fn race(channel: Channel, round: Arc<Round>, index: usize) -> Result<Heard, tonic::Status> {
    let (path, email) = round.racers[index].clone();
    let mut commands = LicenseCommandsClient::new(channel);
    let license = round.license.clone();
    let position = match path {
        Path::Email => {
            let answer = commands
                .add_users_by_email(staff(proto::AddUsersByEmailRequest {
                    license,
                    emails: email,
                }))
                .await;
            match answer {
                Err(status) if status.code() == Code::ResourceExhausted => {
                    return Ok(Heard::NoSeat);
                }
                answer => answer?.into_inner().position,
            }
        }
        Path::Csv => {
            let chunks = vec![
                proto::ImportCsvChunk {
                    part: Some(proto::import_csv_chunk::Part::Start(
                        proto::ImportCsvStart {
                            license,
                            mode: "add".into(),
                        },
                    )),
                },
                proto::ImportCsvChunk {
                    part: Some(proto::import_csv_chunk::Part::Data(
                        format!("Email\n{email}\n").into_bytes(),
                    )),
                },
            ];
            match commands.import_csv(staff(tokio_stream::iter(chunks))).await {
                Err(status) if status.code() == Code::ResourceExhausted => {
                    return Ok(Heard::NoSeat);
                }
                answer => answer?.into_inner().position,
            }
        }
        Path::Key => {
            commands
                .redeem_license_key(with_token(
                    proto::RedeemLicenseKeyRequest {
                        key: round.key.clone(),
                    },
                    USER,
                    Some(&email),
                ))
                .await?
                .into_inner()
                .position
        }
        Path::Link => {
            commands
                .join_via_link(with_token(
                    proto::JoinViaLinkRequest {
                        token: round.link.clone(),
                    },
                    USER,
                    Some(&email),
                ))
                .await?
                .into_inner()
                .position
        }
        Path::Lms => {
            commands
                .assignment_opened(system(proto::AssignmentOpenedRequest {
                    teacher: round.teacher.clone(),
                    student: email,
                    lms: "canvas".into(),
                    kami_assignment: true,
                }))
                .await?
                .into_inner()
                .position
        }
        Path::Roster => {
            commands
                .sync_classroom_roster(system(proto::SyncClassroomRosterRequest {
                    license,
                    course: "course-1".into(),
                    students: vec![email],
                }))
                .await?
                .into_inner()
                .position
        }
        // Every OU racer reports the OU's whole membership, as overlapping sync jobs do.
        Path::Ou => {
            commands
                .sync_ou(system(proto::SyncOuRequest {
                    license,
                    members: round.ou_users(),
                }))
                .await?
                .into_inner()
                .position
        }
        Path::SignUp => {
            commands
                .user_signed_up(system(proto::UserSignedUpRequest {
                    email,
                    role: "student".into(),
                }))
                .await?
                .into_inner()
                .position
        }
        Path::Scan => {
            commands
                .scan_domain(system(proto::ScanDomainRequest {
                    domain: round.domain.clone(),
                    accounts: vec![proto::ScannedAccount {
                        email,
                        role: "student".into(),
                    }],
                }))
                .await?
                .into_inner()
                .position
        }
    };
    Ok(Heard::Ok(position))
}

/// Issues the round's license, fills all but `free` seats, and prepares its paths.
async fn prepare(
    commands: &mut LicenseCommandsClient<Channel>,
    queries: &mut LicenseQueriesClient<Channel>,
    number: usize,
    free: u64,
) -> Round {
    let kind = [Kind::Teacher, Kind::DistrictOu, Kind::DistrictDomain][number % 3];
    let license = format!("race-{number}");
    let domain = format!("race{number}.edu");
    let teacher = format!("teacher@{domain}");
    let seats = free + 3;
    commands
        .issue_license(staff(proto::IssueLicenseRequest {
            license: license.clone(),
            r#type: match kind {
                Kind::Teacher => "teacher",
                _ => "district",
            }
            .into(),
            seats: i64::try_from(seats).unwrap(),
            valid_from: "2026-08-01T00:00:00Z".into(),
            valid_until: "2027-07-31T23:59:59Z".into(),
            admins: vec![ADMIN.into()],
        }))
        .await
        .unwrap();
    // Three seats are taken before the race; on a teacher license one by the teacher
    // whose assignments enroll students (LMS-2).
    let taken = match kind {
        Kind::Teacher => format!("{teacher}, early1@{domain}, early2@{domain}"),
        _ => format!("early0@{domain}, early1@{domain}, early2@{domain}"),
    };
    let mut position = commands
        .add_users_by_email(staff(proto::AddUsersByEmailRequest {
            license: license.clone(),
            emails: taken,
        }))
        .await
        .unwrap()
        .into_inner()
        .position;
    match kind {
        Kind::Teacher => {}
        Kind::DistrictOu => {
            position = commands
                .link_ou(with_token(
                    proto::LinkOuRequest {
                        license: license.clone(),
                        ou_paths: vec!["/Students".into()],
                        google_admin: true,
                    },
                    USER,
                    Some(ADMIN),
                ))
                .await
                .unwrap()
                .into_inner()
                .position;
        }
        Kind::DistrictDomain => {
            position = commands
                .claim_domain(staff(proto::ClaimDomainRequest {
                    license: license.clone(),
                    domain: domain.clone(),
                    dedicated: false,
                }))
                .await
                .unwrap()
                .into_inner()
                .position;
        }
    }
    // The projections answer once they have reached the last command (read your writes).
    let view = queries
        .get_license(crate::at_least(
            staff(proto::LicenseRef {
                license: license.clone(),
            }),
            position,
        ))
        .await
        .unwrap()
        .into_inner();
    let paths = kind.paths();
    let racers = (0..RACERS)
        .map(|i| (paths[i % paths.len()], format!("racer{i}@{domain}")))
        .collect();
    Round {
        license,
        kind,
        seats,
        key: view.key,
        link: view.link,
        teacher,
        domain,
        racers,
    }
}

/// The license's events from the feed, up to and including `position`.
async fn license_events(
    channel: Channel,
    license: &str,
    position: u64,
) -> Vec<ledger::RecordedEvent> {
    let mut feed = EventFeedClient::new(channel)
        .subscribe(staff(proto::SubscribeRequest {
            from_position: 0,
            license: license.into(),
            event_types: Vec::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS), feed.message())
            .await
            .expect("the feed reaches the round's last position")
            .unwrap()
            .expect("the feed stays open");
        let reached = event.position >= position;
        events.push(replay_tool::source::from_feed(event).unwrap());
        if reached {
            return events;
        }
    }
}

async fn list_users(
    queries: &mut LicenseQueriesClient<Channel>,
    license: &str,
    status: &str,
    position: u64,
) -> BTreeSet<String> {
    queries
        .list_users(crate::at_least(
            staff(proto::ListUsersRequest {
                license: license.into(),
                status: status.into(),
                page_size: 1_000,
                ..Default::default()
            }),
            position,
        ))
        .await
        .unwrap()
        .into_inner()
        .users
        .into_iter()
        .map(|user| user.email)
        .collect()
}

async fn play_round(channels: &[Channel], number: usize, free: u64) {
    let mut commands = LicenseCommandsClient::new(channels[0].clone());
    let mut queries = LicenseQueriesClient::new(channels[0].clone());
    let round = Arc::new(prepare(&mut commands, &mut queries, number, free).await);
    let context = format!("round {number} ({:?}, {free} free seats)", round.kind);

    // SEAT-5: all racers start together.
    let start = Arc::new(Barrier::new(RACERS));
    let mut racers = Vec::new();
    for index in 0..RACERS {
        let channel = channels[index % channels.len()].clone();
        let round = round.clone();
        let start = start.clone();
        racers.push(tokio::spawn(async move {
            start.wait().await;
            race(channel, round, index).await
        }));
    }
    let mut heard = Vec::new();
    for (index, racer) in racers.into_iter().enumerate() {
        let answer = racer.await.unwrap();
        let answer = answer.unwrap_or_else(|status| {
            panic!(
                "{context}: racer {index} ({:?}) was refused: {status:?}",
                round.racers[index].0
            )
        });
        heard.push(answer);
    }
    let last_position = heard
        .iter()
        .filter_map(|h| match h {
            Heard::Ok(position) => Some(*position),
            Heard::NoSeat => None,
        })
        .max()
        .unwrap_or(0);

    let view = queries
        .get_license(crate::at_least(
            staff(proto::LicenseRef {
                license: round.license.clone(),
            }),
            last_position,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(view.users_count <= view.seats, "{context}: {view:?}");
    assert_eq!(
        view.users_count, round.seats,
        "{context}: every free seat was taken (64 wanted {free})"
    );

    // A seat increase promotes the first waitlisted, in log order (SEAT-4).
    let promote = view.waitlisted.min(3);
    let raised = commands
        .change_seats(staff(proto::ChangeSeatsRequest {
            license: round.license.clone(),
            seats: i64::try_from(round.seats + promote).unwrap(),
        }))
        .await
        .unwrap()
        .into_inner()
        .position
        .max(last_position);

    let events = license_events(channels[0].clone(), &round.license, raised).await;
    let racer_emails: BTreeSet<&str> = round.racers.iter().map(|(_, e)| e.as_str()).collect();
    let mut license = License::default();
    let mut waitlisted_order = Vec::new();
    let mut promoted_order = Vec::new();
    let mut last_seat_taken = None;
    let mut first_waitlisted = None;
    let mut waitlist_before_raise = Vec::new();
    for recorded in &events {
        let (meta, event) = replay_tool::replay::decode(recorded).unwrap();
        if matches!(event, Event::SeatsChanged(_)) {
            waitlist_before_raise = license
                .state()
                .unwrap()
                .waitlist()
                .map(|e| e.as_str().to_owned())
                .collect();
        }
        let racer = event
            .member_email()
            .map(|e| e.as_str().to_owned())
            .filter(|e| racer_emails.contains(e.as_str()));
        match (&event, racer) {
            (Event::UserAdded(_) | Event::InviteSent(_), Some(_)) => {
                last_seat_taken = Some(recorded.position);
            }
            (Event::UserWaitlisted(_), Some(email)) => {
                first_waitlisted.get_or_insert(recorded.position);
                waitlisted_order.push(email);
            }
            (Event::UserPromoted(_), Some(email)) => promoted_order.push(email),
            _ => {}
        }
        license.apply(&meta, &event);
        let state = license.state().unwrap();
        // SEAT-5 at every point of the log, not only at the end.
        assert!(
            state.users_count() <= u64::from(state.seats()),
            "{context}: over-allocated at position {}",
            recorded.position
        );
    }
    let state = license.state().unwrap();
    let racers_seated = round
        .racers
        .iter()
        .filter(|(_, email)| {
            state
                .members()
                .any(|(e, m)| e.as_str() == email && m.status.holds_seat())
        })
        .count() as u64;
    assert_eq!(
        racers_seated,
        free + promote,
        "{context}: exactly the free seats went to racers, then the promoted"
    );
    if let (Some(seated), Some(waiting)) = (last_seat_taken, first_waitlisted) {
        assert!(
            seated < waiting,
            "{context}: a racer took a seat (position {seated}) after another was waitlisted ({waiting})"
        );
    }
    assert_eq!(
        waitlist_before_raise, waitlisted_order,
        "{context}: the waitlist is in log (arrival) order"
    );
    assert_eq!(
        promoted_order,
        waitlisted_order[..promote as usize],
        "{context}: the first waitlisted are promoted first"
    );
    // Every racer who did not get a seat is waitlisted, or heard that its batch did not fit.
    let no_seat = heard.iter().filter(|h| **h == Heard::NoSeat).count() as u64;
    assert_eq!(
        waitlisted_order.len() as u64 + no_seat,
        RACERS as u64 - free,
        "{context}: every other racer waits or was refused"
    );

    // The API agrees with the log.
    let listed_waitlisted = list_users(&mut queries, &round.license, "waitlisted", raised).await;
    let waiting_now: BTreeSet<String> = waitlisted_order[promote as usize..]
        .iter()
        .cloned()
        .collect();
    assert_eq!(
        listed_waitlisted, waiting_now,
        "{context}: ListUsers' waitlist"
    );
    let accepted = list_users(&mut queries, &round.license, "accepted", raised).await;
    for email in &promoted_order {
        assert!(accepted.contains(email), "{context}: {email} was promoted");
    }
}

fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-09-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_clients_never_over_allocate_through_any_add_path() {
    // SEAT-5, SEAT-3, SEAT-4.
    let rounds = std::env::var("SEAT_RACE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS_DEFAULT);
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let mut tokens = Tokens::new();
    tokens.insert(STAFF, Scope::Staff);
    tokens.insert(SYSTEM, Scope::System);
    tokens.insert(USER, Scope::User);
    let config =
        ServerConfig::embedded(dir.path(), tokens, Arc::new(ManualClock::new(start_time())));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, config, async {
        let _ = stopped.await;
    }));
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            Channel::from_shared(address.clone())
                .unwrap()
                .timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS))
                .connect()
                .await
                .unwrap(),
        );
    }
    for number in 0..rounds {
        // 1 to 8 free seats: always fewer than the 64 racers want.
        let free = 1 + (number as u64 * 5) % 8;
        play_round(&channels, number, free).await;
    }
    drop(channels);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
