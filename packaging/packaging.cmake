# SPDX-License-Identifier: MIT
# packaging.cmake - what `cmake --install` lays out besides the programs
# (units, configuration, tmpfiles.d, examples, documentation, man pages),
# one CMake install component per Debian package (debian/rules,
# packaging/README.md).
#
# Components, one Debian package each:
#   agent    porcupine-agent    the agent, its Redis unit, porcupinectl
#   milter   porcupine-milter   Postfix's milter
#   dovecot  dovecot-porcupine  the Dovecot plugin and porcupine-checkpassword
#                               (2.4: the settings module, the Lua passdb)
#
# Paths the system fixes are absolute (Debian 12: /etc, /lib/systemd/system
# (Debian 13: /usr/lib/systemd/system),
# /usr/lib/tmpfiles.d); the rest follow the prefix. The packages are made
# with the prefix /usr (debian/rules: dh_auto_configure), and
# `cmake --install BUILD --prefix /usr` gives the packages' tree.
set(PORCUPINE_SYSCONFDIR /etc/porcupine CACHE PATH "Where porcupine.conf and the cluster secret live")
# systemd's unit directory for packaged units, as systemd's pkg-config file
# gives it (Debian 12: /lib/systemd/system; 13: /usr/lib/systemd/system).
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_get_variable(pcp_systemd_unitdir systemd systemdsystemunitdir)
endif()
if(NOT pcp_systemd_unitdir)
  set(pcp_systemd_unitdir /lib/systemd/system)
endif()
set(PORCUPINE_SYSTEMD_UNITDIR ${pcp_systemd_unitdir} CACHE PATH "systemd unit directory")
set(PORCUPINE_TMPFILESDIR /usr/lib/tmpfiles.d CACHE PATH "tmpfiles.d directory")
set(PORCUPINE_PACKAGING_DIR ${CMAKE_CURRENT_LIST_DIR})

# porcupine-agent
install(FILES ${PORCUPINE_PACKAGING_DIR}/etc/porcupine.conf
        DESTINATION ${PORCUPINE_SYSCONFDIR} COMPONENT agent)
install(FILES ${PORCUPINE_PACKAGING_DIR}/systemd/porcupine-agent.service
              ${PORCUPINE_PACKAGING_DIR}/systemd/porcupine-redis.service
        DESTINATION ${PORCUPINE_SYSTEMD_UNITDIR} COMPONENT agent)
install(FILES ${PORCUPINE_PACKAGING_DIR}/tmpfiles/porcupine.conf
        DESTINATION ${PORCUPINE_TMPFILESDIR} COMPONENT agent)
install(FILES ${PORCUPINE_PACKAGING_DIR}/etc/porcupine.conf
        DESTINATION ${CMAKE_INSTALL_DATADIR}/porcupine-agent COMPONENT agent)
install(FILES ${PROJECT_SOURCE_DIR}/README.md ${PROJECT_SOURCE_DIR}/docs/agent.md
              ${PROJECT_SOURCE_DIR}/docs/configuration.md ${PROJECT_SOURCE_DIR}/docs/architecture.md
              ${PROJECT_SOURCE_DIR}/docs/monitoring.md ${PORCUPINE_PACKAGING_DIR}/README.md
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/porcupine-agent COMPONENT agent)
# The Grafana dashboard of docs/monitoring.md: beside the example
# configuration, not under doc/, which minimal installations leave out
# (dpkg path-exclude) while Grafana's provisioning may point at it.
install(FILES ${PORCUPINE_PACKAGING_DIR}/grafana/porcupine-dashboard.json
        DESTINATION ${CMAKE_INSTALL_DATADIR}/porcupine-agent/grafana COMPONENT agent)

# Man pages, built by the target porcupine-man (part of "all"):
# porcupine.conf(5) is printed by `porcupine-config-doc --man` from the
# parameter table, so it lists exactly the parameters of the programs it
# is installed with; the other pages are written by hand in docs/man/ and
# given the version here. Each is installed gzip -9n'd (no name or time
# stamp, so the same tree gives the same bytes), as Debian's policy wants
# them.
find_program(PORCUPINE_GZIP gzip REQUIRED)
set(PORCUPINE_MAN_DIR ${PROJECT_BINARY_DIR}/man)
set(PORCUPINE_MAN_PAGES porcupine-agent.8 porcupinectl.8 porcupine-milter.8 porcupine-config-doc.1)
foreach(page IN LISTS PORCUPINE_MAN_PAGES)
  configure_file(${PROJECT_SOURCE_DIR}/docs/man/${page}.in ${PORCUPINE_MAN_DIR}/${page} @ONLY)
endforeach()
add_custom_command(OUTPUT ${PORCUPINE_MAN_DIR}/porcupine.conf.5
                   COMMAND sh -c "\"$0\" --man > \"$1.tmp\" && mv -f \"$1.tmp\" \"$1\""
                           $<TARGET_FILE:porcupine-config-doc> ${PORCUPINE_MAN_DIR}/porcupine.conf.5
                   DEPENDS porcupine-config-doc
                   COMMENT "Generating porcupine.conf.5 from the parameter table" VERBATIM)
set(PORCUPINE_MAN_GZ)
foreach(page porcupine.conf.5 ${PORCUPINE_MAN_PAGES})
  add_custom_command(OUTPUT ${PORCUPINE_MAN_DIR}/${page}.gz
                     COMMAND sh -c "\"$0\" -9n < \"$1\" > \"$1.gz.tmp\" && mv -f \"$1.gz.tmp\" \"$1.gz\""
                             ${PORCUPINE_GZIP} ${PORCUPINE_MAN_DIR}/${page}
                     DEPENDS ${PORCUPINE_MAN_DIR}/${page} VERBATIM)
  list(APPEND PORCUPINE_MAN_GZ ${PORCUPINE_MAN_DIR}/${page}.gz)
endforeach()
add_custom_target(porcupine-man ALL DEPENDS ${PORCUPINE_MAN_GZ})
install(FILES ${PORCUPINE_MAN_DIR}/porcupine-agent.8.gz ${PORCUPINE_MAN_DIR}/porcupinectl.8.gz
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man8 COMPONENT agent)
install(FILES ${PORCUPINE_MAN_DIR}/porcupine.conf.5.gz
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man5 COMPONENT agent)
install(FILES ${PORCUPINE_MAN_DIR}/porcupine-config-doc.1.gz
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man1 COMPONENT agent)
install(FILES ${PORCUPINE_MAN_DIR}/porcupine-milter.8.gz
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man8 COMPONENT milter)

# porcupine-milter
install(FILES ${PORCUPINE_PACKAGING_DIR}/systemd/porcupine-milter.service
        DESTINATION ${PORCUPINE_SYSTEMD_UNITDIR} COMPONENT milter)
install(FILES ${PORCUPINE_PACKAGING_DIR}/postfix/main.cf.porcupine
        DESTINATION ${CMAKE_INSTALL_DATADIR}/porcupine-milter COMPONENT milter)
install(FILES ${PROJECT_SOURCE_DIR}/milter/README.md
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/porcupine-milter COMPONENT milter)

# dovecot-porcupine: the conf.d snippet is an example, not enabled; the
# one for the Dovecot release the plugin is built for (2.3 when none is).
if(PORCUPINE_DOVECOT_RELEASE)
  set(pcp_conf_release ${PORCUPINE_DOVECOT_RELEASE})
else()
  set(pcp_conf_release 2.3)
endif()
install(FILES ${PROJECT_SOURCE_DIR}/dovecot-plugin/conf.d/dovecot-${pcp_conf_release}/90-porcupine.conf
        DESTINATION ${CMAKE_INSTALL_DATADIR}/dovecot-porcupine COMPONENT dovecot)
install(FILES ${PROJECT_SOURCE_DIR}/dovecot-plugin/README.md
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/dovecot-porcupine COMPONENT dovecot)

# ---- Debian packages ----
# debian/ builds them (dpkg-buildpackage; scripts/build-debs.sh), one
# install component per package: debian/rules installs each component into
# its package's tree. Installing must not build "all" (the tests included):
# debian/rules builds only the shipped targets first. So `make install`
# does not build first either.
set(CMAKE_SKIP_INSTALL_ALL_DEPENDENCY ON)
